//! Schema migrations from `migrations/*.sql`, embedded at compile time and applied in order.
//! `PRAGMA user_version` records how many have run.

use rusqlite::Connection;

use crate::store::StoreError;

const MIGRATIONS: &[&str] = &[
    include_str!("../../../../migrations/0001_init.sql"),
    include_str!("../../../../migrations/0002_tokens.sql"),
    include_str!("../../../../migrations/0003_seal_generation.sql"),
    include_str!("../../../../migrations/0004_data_key_rotation.sql"),
    include_str!("../../../../migrations/0005_requests.sql"),
    include_str!("../../../../migrations/0006_verification_sweep.sql"),
    include_str!("../../../../migrations/0007_audit_by_time.sql"),
    include_str!("../../../../migrations/0008_counts_by_state.sql"),
];

/// Applies the migrations this database has not seen, each in its own transaction.
pub fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {applied} is newer than this binary knows ({}); upgrade vault-server",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(i64::MAX))?;
        tx.commit()?;
    }
    Ok(())
}

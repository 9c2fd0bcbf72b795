//! Schema migrations from `migrations/postgres/*.sql`, embedded at compile time and applied in
//! order, each in one transaction under an advisory lock: replicas starting together apply each
//! migration once. `vault_schema` records how many have run.

use crate::store::StoreError;

pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../../migrations/postgres/0001_init.sql"),
    include_str!("../../../../migrations/postgres/0002_host_slots.sql"),
    include_str!("../../../../migrations/postgres/0003_audit_reason.sql"),
    include_str!("../../../../migrations/postgres/0004_change_log_guarded.sql"),
];

/// The advisory lock key migrations run under ("vault" in ASCII).
const MIGRATION_LOCK: i64 = 0x0076_6175_6c74;

/// Applies the migrations this database has not seen.
pub(super) async fn apply(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS vault_schema (version integer NOT NULL)").await?;
        let applied: i64 = tx.query_one("SELECT count(*) FROM vault_schema", &[]).await?.try_get(0)?;
        let applied = usize::try_from(applied).unwrap_or(usize::MAX);
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "schema version {applied} is newer than this binary knows ({}); upgrade vault-server",
                MIGRATIONS.len()
            )));
        }
        if applied > i {
            continue;
        }
        tx.batch_execute(sql).await?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("INSERT INTO vault_schema (version) VALUES ($1)", &[&version]).await?;
        tx.commit().await?;
    }
    Ok(())
}

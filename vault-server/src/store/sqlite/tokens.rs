//! Token rows in the SQLite store.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::store::{Millis, StoreError, TokenRow};

pub(super) fn insert(conn: &mut Connection, t: &TokenRow) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO tokens (id, role, digest, key_id, mac, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![t.id, t.role, t.digest, t.key_id, t.mac, t.created_at],
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn all(conn: &Connection) -> Result<Vec<TokenRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
                "SELECT id, role, digest, key_id, mac, created_at, last_used_at, revoked_at FROM tokens ORDER BY created_at, id",
            )?;
    let rows = stmt.query_map([], |r| {
        Ok(TokenRow {
            id: r.get(0)?,
            role: r.get(1)?,
            digest: r.get(2)?,
            key_id: r.get(3)?,
            mac: r.get(4)?,
            created_at: r.get(5)?,
            last_used_at: r.get(6)?,
            revoked_at: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn revoke(conn: &mut Connection, id: &str, now: Millis) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let revoked: Option<Option<i64>> =
        tx.query_row("SELECT revoked_at FROM tokens WHERE id = ?1", [id], |r| r.get(0)).optional()?;
    match revoked {
        None => return Err(StoreError::NotFound),
        Some(Some(_)) => return Err(StoreError::Revoked),
        Some(None) => {}
    }
    tx.execute("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1", params![id, now])?;
    tx.commit()?;
    Ok(())
}

pub(super) fn record_use(conn: &mut Connection, uses: &[(String, Millis)]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt =
            tx.prepare_cached("UPDATE tokens SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1")?;
        for (id, at) in uses {
            stmt.execute(params![id, at])?;
        }
    }
    tx.commit()?;
    Ok(())
}

//! Token rows in the SQLite store.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::store::{Millis, StoreError, TokenRow, UnreadableToken};

pub(super) fn insert(conn: &mut Connection, t: &TokenRow) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO tokens (id, role, digest, key_id, mac, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![t.id, t.role, t.digest, t.key_id, t.mac, t.created_at],
    )?;
    tx.commit()?;
    Ok(())
}

/// Reads every row column by column, so one bad value makes that row unreadable, not the table.
pub(super) fn all(conn: &Connection) -> Result<Vec<Result<TokenRow, UnreadableToken>>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, role, digest, key_id, mac, created_at, last_used_at, revoked_at FROM tokens ORDER BY created_at, id",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(row(r));
    }
    Ok(out)
}

fn row(r: &Row<'_>) -> Result<TokenRow, UnreadableToken> {
    let id = match r.get_ref(0) {
        Ok(ValueRef::Text(t)) => String::from_utf8_lossy(t).chars().filter(|c| !c.is_control()).take(64).collect(),
        _ => "(no id)".to_owned(),
    };
    let unreadable = |column: &str, e: &dyn std::fmt::Display| UnreadableToken {
        id: id.clone(),
        reason: format!("column {column} cannot be read: {e}"),
    };
    let key_id: i64 = r.get(3).map_err(|e| unreadable("key_id", &e))?;
    Ok(TokenRow {
        id: r.get(0).map_err(|e| unreadable("id", &e))?,
        role: r.get(1).map_err(|e| unreadable("role", &e))?,
        digest: r.get(2).map_err(|e| unreadable("digest", &e))?,
        key_id: u32::try_from(key_id).map_err(|_| unreadable("key_id", &format_args!("{key_id} is out of range")))?,
        mac: r.get(4).map_err(|e| unreadable("mac", &e))?,
        created_at: r.get(5).map_err(|e| unreadable("created_at", &e))?,
        last_used_at: r.get(6).map_err(|e| unreadable("last_used_at", &e))?,
        revoked_at: r.get(7).map_err(|e| unreadable("revoked_at", &e))?,
    })
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
    // The MAC goes with the revocation: un-revoking the row would need a new one, and so the key.
    tx.execute("UPDATE tokens SET revoked_at = ?2, mac = X'' WHERE id = ?1", params![id, now])?;
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

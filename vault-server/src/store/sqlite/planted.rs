//! Rows as someone with write access to the database file may leave them: any value a column's
//! type admits, CHECK and foreign-key constraints ignored. Every read path must answer with a value or an error,
//! never a panic. The fuzz target for stored rows (`vault_server::fuzzing::stored_rows`) plants
//! rows here and reads them back through the store's own queries.

use rusqlite::Connection;
use rusqlite::types::Value;

use super::{keys, migrate, requests, rows, token_rows};
use crate::store::{
    AuditQuery, AuditRecord, CredentialRow, ListQuery, StoreError, StoredRequest, TokenRow, UnlockMaterial,
    UnreadableToken, UnusedQuery,
};

/// The tables a row can be planted in, with their column counts.
pub const TABLES: [(&str, usize); 6] =
    [("credentials", 16), ("tokens", 8), ("keyring", 4), ("vault_meta", 6), ("audit_events", 12), ("requests", 8)];

/// What the store's read paths made of the planted rows.
#[derive(Debug, Default)]
pub struct ReadBack {
    pub credentials: Vec<CredentialRow>,
    pub tokens: Vec<Result<TokenRow, UnreadableToken>>,
    pub material: Option<UnlockMaterial>,
    pub audit: Vec<AuditRecord>,
    /// Remembered requests with their caller and id.
    pub requests: Vec<(String, String, StoredRequest)>,
    pub errors: Vec<StoreError>,
}

/// Plants `rows` (a table index into [`TABLES`] and that many values) in a fresh in-memory
/// database with the current schema, then reads everything back. Rows the schema refuses (a
/// type, a NOT NULL, a duplicate key) are skipped, as an editor of the file would see them fail.
pub fn plant_and_read(rows: &[(usize, Vec<Value>)]) -> Result<ReadBack, StoreError> {
    // One schema per thread, emptied for each call: applying the migrations every time would
    // cost the fuzzer most of its executions.
    thread_local!(static CONN: std::cell::RefCell<Option<Connection>> = const { std::cell::RefCell::new(None) });
    CONN.with(|cell| {
        let mut slot = cell.borrow_mut();
        let conn = match slot.take() {
            Some(conn) => conn,
            None => fresh()?,
        };
        let out = plant_into(&conn, rows);
        *slot = Some(conn);
        out
    })
}

fn fresh() -> Result<Connection, StoreError> {
    let mut conn = Connection::open_in_memory()?;
    migrate::apply(&mut conn)?;
    conn.pragma_update(None, "ignore_check_constraints", "ON")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

fn plant_into(conn: &Connection, rows: &[(usize, Vec<Value>)]) -> Result<ReadBack, StoreError> {
    for (name, _) in TABLES {
        conn.execute(&format!("DELETE FROM {name}"), [])?;
    }
    let (mut pairs, mut request_ids) = (Vec::new(), Vec::new());
    for (table, values) in rows {
        let Some((name, n)) = TABLES.get(*table) else { continue };
        if values.len() != *n {
            continue;
        }
        let marks = vec!["?"; *n].join(", ");
        let columns = if *name == "credentials" { format!("({})", rows::COLUMNS) } else { String::new() };
        let sql = format!("INSERT INTO {name} {columns} VALUES ({marks})");
        if conn.execute(&sql, rusqlite::params_from_iter(values.iter())).is_ok()
            && let (Value::Text(a), Value::Text(b)) = (&values[0], &values[1])
        {
            match *name {
                "credentials" => pairs.push((a.clone(), b.clone())),
                "requests" => request_ids.push((a.clone(), b.clone())),
                _ => {}
            }
        }
    }
    let mut back = read_back(conn, &pairs);
    for (caller, id) in &request_ids {
        match requests::find(conn, caller, id) {
            Ok(found) => back.requests.extend(found.map(|f| (caller.clone(), id.clone(), f))),
            Err(e) => back.errors.push(e),
        }
    }
    Ok(back)
}

fn read_back(conn: &Connection, pairs: &[(String, String)]) -> ReadBack {
    let mut out = ReadBack::default();
    let keep = |r: Result<Vec<CredentialRow>, StoreError>, out: &mut ReadBack| match r {
        Ok(rows) => out.credentials.extend(rows),
        Err(e) => out.errors.push(e),
    };
    for (m, c) in pairs {
        keep(rows::get_row(conn, m, c).map(|r| r.into_iter().collect()), &mut out);
    }
    let list = ListQuery { include_revoked: true, limit: 1000, ..ListQuery::default() };
    keep(rows::list(conn, &list), &mut out);
    let unused = UnusedQuery { cutoff: i64::MAX, mailbox: None, after: None, limit: 1000 };
    keep(rows::list_unused(conn, &unused), &mut out);
    keep(keys::sealed_before_on(conn, u32::MAX, 1000), &mut out);
    match token_rows::all(conn) {
        Ok(t) => out.tokens = t,
        Err(e) => out.errors.push(e),
    }
    match super::read_unlock_material(conn) {
        Ok(m) => out.material = Some(m),
        Err(e) => out.errors.push(e),
    }
    let audit =
        AuditQuery { mailbox: None, client: None, caller: None, since: None, until: None, before: None, limit: 1000 };
    match rows::audit_events(conn, &audit) {
        Ok(a) => out.audit = a,
        Err(e) => out.errors.push(e),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    #[test]
    fn planted_rows_read_back_as_values_or_errors() {
        let mut credential = vec![Value::Null; 16];
        credential[..8].clone_from_slice(&[
            text("a@sina.com"),
            text("c"),
            text("sina"),
            Value::Integer(7),
            Value::Integer(-3),
            Value::Integer(1),
            Value::Blob(vec![1; 3]),
            Value::Blob(vec![2; 40]),
        ]);
        credential[8] = Value::Integer(5);
        let token = vec![
            text("tk_0123456789ab"),
            text("admin"),
            Value::Blob(vec![0; 32]),
            Value::Integer(1 << 40),
            Value::Blob(vec![]),
            Value::Integer(1),
            Value::Null,
            Value::Null,
        ];
        let meta = vec![
            Value::Integer(1),
            Value::Blob(vec![9; 3]),
            Value::Integer(8),
            text("x"),
            Value::Integer(1),
            Value::Integer(0),
        ];
        let back = plant_and_read(&[(0, credential), (1, token), (3, meta)]).unwrap();
        // Odd state and version: read, not refused; the short nonce reads as one that opens nothing.
        let row = &back.credentials[0];
        assert_eq!((row.mailbox.as_str(), row.version), ("a@sina.com", 0));
        assert_eq!(row.code.as_ref().map(|c| c.sealed.nonce), Some([0; 24]));
        assert!(matches!(&back.tokens[..], [Err(UnreadableToken { reason, .. })] if reason.contains("key_id")));
        // A text in an INTEGER column of a STRICT table is refused at insert, so no meta row.
        assert!(back.material.is_none());
        assert!(back.errors.iter().any(|e| matches!(e, StoreError::NotInitialised)));
    }
}

//! Remembered requests (idempotent writes) in the SQLite store.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::Db;
use crate::store::{CredentialRow, RecordedAnswer, RequestKey, RequestRecord, StoreError, StoredRequest};

/// Remembers `r` with its answer for `row`, inside the write's transaction, after forgetting
/// requests past their time. A taken id is `RequestIdTaken`, and the write rolls back: the
/// vault looks ids up first, under the pair's lock, so only a concurrent call with the same id
/// on another pair gets here.
pub(super) fn insert(tx: &Transaction<'_>, r: Option<RequestRecord>, row: &CredentialRow) -> Result<(), StoreError> {
    let Some(r) = r else { return Ok(()) };
    tx.prepare_cached("DELETE FROM requests WHERE created_at < ?1")?.execute([r.forget_before])?;
    if find(tx, &r.caller, &r.request_id)?.is_some() {
        return Err(StoreError::RequestIdTaken);
    }
    let answer = (r.answer)(row);
    tx.prepare_cached(
        "INSERT INTO requests (caller, request_id, rpc, fingerprint, key_id, answer, mac, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![r.caller, r.request_id, r.rpc, r.fingerprint, r.key_id, answer.bytes, answer.mac, r.now])?;
    Ok(())
}

pub(super) fn find(conn: &Connection, caller: &str, request_id: &str) -> Result<Option<StoredRequest>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT rpc, fingerprint, key_id, answer, mac, created_at FROM requests \
             WHERE caller = ?1 AND request_id = ?2",
        )?
        .query_row(params![caller, request_id], |r| {
            Ok(StoredRequest {
                rpc: r.get(0)?,
                fingerprint: r.get(1)?,
                key_id: r.get(2)?,
                answer: RecordedAnswer { bytes: r.get(3)?, mac: r.get(4)? },
                created_at: r.get(5)?,
            })
        })
        .optional()?)
}

impl Db {
    pub fn find_request(&self, caller: &str, request_id: &str) -> Result<Option<StoredRequest>, StoreError> {
        self.with_reader(|conn| find(conn, caller, request_id))
    }

    pub fn update_request_answer(&self, key: &RequestKey, answer: &RecordedAnswer) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE requests SET answer = ?5, mac = ?6 \
             WHERE caller = ?1 AND request_id = ?2 AND rpc = ?3 AND created_at = ?4",
            params![key.caller, key.request_id, key.rpc, key.created_at, answer.bytes, answer.mac],
        )?;
        tx.commit()?;
        Ok(())
    }
}

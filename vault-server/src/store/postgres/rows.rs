//! Row mapping and the queries of the PostgreSQL store that read.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::crypto::Sealed;
use crate::outcome::ProbeOutcome;
use crate::store::{
    AuditEvent, AuditQuery, AuditRecord, CredentialRow, CredentialState, ListQuery, StoreError, StoredCode, UnusedQuery,
};

pub(super) const COLUMNS: &str = "mailbox, client, provider, state, version, key_id, nonce, ciphertext, created_at, \
     rotated_at, revoked_at, revoke_reason, last_used_at, last_verified_at, last_probe_outcome, generation";

/// A query's parameters, owned, so that the future running it can borrow them.
pub(super) type Values = Vec<Box<dyn ToSql + Sync + Send>>;

/// `values` as the slice tokio-postgres takes.
pub(super) fn refs(values: &Values) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect()
}

pub(super) fn outcome_from(v: Option<i32>) -> Option<ProbeOutcome> {
    v.and_then(ProbeOutcome::from_i32)
}

/// A row as the store's type; a value out of range reads as one that opens nothing (as in SQLite).
pub(super) fn read_row(r: &Row) -> Result<CredentialRow, StoreError> {
    let state = match r.try_get::<_, i16>(3)? {
        1 => CredentialState::Active,
        _ => CredentialState::Revoked,
    };
    let key_id: Option<i64> = r.try_get(5)?;
    let nonce: Option<Vec<u8>> = r.try_get(6)?;
    let ciphertext: Option<Vec<u8>> = r.try_get(7)?;
    let code = match (key_id, nonce, ciphertext) {
        (Some(key_id), Some(nonce), Some(ciphertext)) => {
            let nonce = nonce.try_into().unwrap_or([0u8; 24]);
            let generation = r.try_get::<_, Option<Vec<u8>>>(15)?.map(|g| g.try_into().unwrap_or([0u8; 16]));
            let key_id = u32::try_from(key_id).unwrap_or(u32::MAX);
            Some(StoredCode { key_id, generation, sealed: Sealed { nonce, ciphertext } })
        }
        _ => None,
    };
    Ok(CredentialRow {
        mailbox: r.try_get(0)?,
        client: r.try_get(1)?,
        provider: r.try_get(2)?,
        state,
        version: r.try_get::<_, i64>(4)?.try_into().unwrap_or(0),
        code,
        created_at: r.try_get(8)?,
        rotated_at: r.try_get(9)?,
        revoked_at: r.try_get(10)?,
        revoke_reason: r.try_get(11)?,
        last_used_at: r.try_get(12)?,
        last_verified_at: r.try_get(13)?,
        last_probe_outcome: outcome_from(r.try_get(14)?),
    })
}

pub(super) fn read_rows(rows: &[Row]) -> Result<Vec<CredentialRow>, StoreError> {
    rows.iter().map(read_row).collect()
}

pub(super) fn get_sql() -> String {
    format!("SELECT {COLUMNS} FROM credentials WHERE mailbox = $1 AND client = $2")
}

pub(super) fn lock_sql() -> String {
    format!("SELECT {COLUMNS} FROM credentials WHERE mailbox = $1 AND client = $2 FOR UPDATE")
}

pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit_events (at, caller, caller_role, rpc, mailbox, client, outcome, \
     probe_outcome, count, first_at, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// INSERT_AUDIT's parameters for `e`.
pub(super) fn audit_values(e: &AuditEvent) -> Values {
    let outcome = e.probe_outcome.map(|o| o as i32);
    let count = i64::try_from(e.count).unwrap_or(i64::MAX);
    vec![
        Box::new(e.at),
        Box::new(e.caller.clone()),
        Box::new(e.caller_role.clone()),
        Box::new(e.rpc.clone()),
        Box::new(e.mailbox.clone()),
        Box::new(e.client.clone()),
        Box::new(e.outcome.clone()),
        Box::new(outcome),
        Box::new(count),
        Box::new(e.first_at),
        Box::new(e.reason.clone()),
    ]
}

/// A List page's SQL for the filters `q` sets: a mailbox or a client as a plain equality, so a
/// prepared statement's generic plan still reads the primary key or `credentials_by_client`
/// from the cursor on.
pub(super) fn list_sql(q: &ListQuery) -> String {
    let filter = match (&q.mailbox, &q.client) {
        (Some(_), _) => "mailbox = $1 AND",
        (None, Some(_)) => "client = $2 AND mailbox >= $4 AND",
        (None, None) => "",
    };
    format!(
        "SELECT {COLUMNS} FROM credentials \
         WHERE {filter} ($1::text IS NULL OR mailbox = $1) AND ($2::text IS NULL OR client = $2) AND ($3 OR state = 1) \
         AND ($7::integer IS NULL OR (state = 1 AND last_probe_outcome = $7)) \
         AND ($8::bigint IS NULL OR (state = 1 AND coalesce(last_verified_at, created_at) < $8)) \
         AND (mailbox, client) > ($4, $5) ORDER BY mailbox, client LIMIT $6"
    )
}

pub(super) fn list_values(q: &ListQuery) -> Values {
    let (after_m, after_c) = q.after.clone().unwrap_or_default();
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let outcome = q.last_probe_outcome.map(|o| o as i32);
    vec![
        Box::new(q.mailbox.clone()),
        Box::new(q.client.clone()),
        Box::new(q.include_revoked),
        Box::new(after_m),
        Box::new(after_c),
        Box::new(limit),
        Box::new(outcome),
        Box::new(q.verified_before),
    ]
}

/// The review's page; one mailbox's as a plain equality, so a generic plan reads that
/// mailbox's bindings, not every binding unused since the cutoff.
pub(super) fn unused_sql(q: &UnusedQuery) -> String {
    let filter = if q.mailbox.is_some() { "mailbox = $2 AND" } else { "" };
    format!(
        "SELECT {COLUMNS} FROM credentials WHERE {filter} state = 1 AND coalesce(last_used_at, created_at) < $1 \
         AND ($2::text IS NULL OR mailbox = $2) \
         AND (coalesce(last_used_at, created_at), mailbox, client) > ($3, $4, $5) \
         ORDER BY coalesce(last_used_at, created_at), mailbox, client LIMIT $6"
    )
}

pub(super) fn unused_values(q: &UnusedQuery) -> Values {
    let (k, m, c) = q.after.clone().unwrap_or((i64::MIN, String::new(), String::new()));
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    vec![Box::new(q.cutoff), Box::new(q.mailbox.clone()), Box::new(k), Box::new(m), Box::new(c), Box::new(limit)]
}

/// An audit page's SQL for the filters `q` sets: a pair or a caller as a plain equality, so
/// that a prepared statement's generic plan (`$N IS NULL OR ...` is no index condition) still
/// reads `audit_events_by_pair` or `audit_events_by_caller`, not the whole trail by time.
pub(super) fn audit_page_sql(q: &AuditQuery) -> &'static str {
    macro_rules! page {
        ($filter:literal) => {
            concat!(
                "SELECT id, at, caller, caller_role, rpc, mailbox, client, outcome, probe_outcome, count, first_at, reason \
                 FROM audit_events WHERE ",
                $filter,
                " (at, id) < ($1, $8) AND ($2::text IS NULL OR mailbox = $2) \
                 AND ($3::text IS NULL OR client = $3) AND ($4::text IS NULL OR caller = $4) \
                 AND ($5::bigint IS NULL OR at >= $5) AND ($6::bigint IS NULL OR at < $6) \
                 ORDER BY at DESC, id DESC LIMIT $7"
            )
        };
    }
    match (&q.mailbox, &q.client, &q.caller) {
        (Some(_), Some(_), _) => page!("mailbox = $2 AND client = $3 AND"),
        (_, _, Some(_)) => page!("caller = $4 AND"),
        (_, _, None) => page!(""),
    }
}

pub(super) fn audit_page_values(q: &AuditQuery) -> Values {
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let (before, before_id) = q.before.unwrap_or((i64::MAX, i64::MAX));
    vec![
        Box::new(before),
        Box::new(q.mailbox.clone()),
        Box::new(q.client.clone()),
        Box::new(q.caller.clone()),
        Box::new(q.since),
        Box::new(q.until),
        Box::new(limit),
        Box::new(before_id),
    ]
}

pub(super) fn read_audit(r: &Row) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: r.try_get(0)?,
        event: AuditEvent {
            at: r.try_get(1)?,
            caller: r.try_get(2)?,
            caller_role: r.try_get(3)?,
            rpc: r.try_get(4)?,
            mailbox: r.try_get(5)?,
            client: r.try_get(6)?,
            outcome: r.try_get(7)?,
            probe_outcome: outcome_from(r.try_get(8)?),
            count: r.try_get::<_, i64>(9)?.try_into().unwrap_or(0),
            first_at: r.try_get(10)?,
            reason: r.try_get(11)?,
        },
    })
}

pub(super) fn due_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM credentials WHERE state = 1 AND coalesce(last_verified_at, created_at) < $1 \
         AND (coalesce(last_verified_at, created_at), mailbox, client) > ($2, $3, $4) \
         ORDER BY coalesce(last_verified_at, created_at), mailbox, client LIMIT $5"
    )
}

pub(super) fn sealed_before_sql() -> String {
    format!("SELECT {COLUMNS} FROM credentials WHERE state = 1 AND key_id < $1 LIMIT $2")
}

pub(super) const COUNT_BY_OUTCOME: &str =
    "SELECT last_probe_outcome, count(*) FROM credentials WHERE state = 1 GROUP BY last_probe_outcome";
pub(super) const COUNT_BY_STATE: &str =
    "SELECT count(*) FILTER (WHERE state = 1), count(*) FILTER (WHERE state = 2) FROM credentials";

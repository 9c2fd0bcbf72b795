//! Row mapping and the read queries of the SQLite store.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::crypto::Sealed;
use crate::outcome::ProbeOutcome;
use crate::store::{
    AuditEvent, AuditQuery, AuditRecord, CredentialRow, CredentialState, DuePosition, ListQuery, Millis, StoreError,
    StoredCode, UnusedQuery,
};

macro_rules! unused_page {
    ($filter:literal) => {
        concat!(
            "WHERE ",
            $filter,
            "state = 1 AND coalesce(last_used_at, created_at) < ?1 AND (?2 IS NULL OR mailbox = ?2) \
             AND coalesce(last_used_at, created_at) >= ?3 \
             AND (coalesce(last_used_at, created_at), mailbox, client) > (?3, ?4, ?5) \
             ORDER BY coalesce(last_used_at, created_at), mailbox, client LIMIT ?6"
        )
    };
}

/// The review's page: the range and the ORDER BY match the partial index credentials_unused. The
/// `>= ?3` gives the range its start (as in [`DUE_PAGE`]): a later page at 1M bindings read
/// every earlier one first, 5.5 s deep in the review.
pub(super) const UNUSED_PAGE: &str = unused_page!("");
/// The review of one mailbox: its few bindings by primary key, sorted. (Walking
/// credentials_unused for one mailbox read every binding unused since the cutoff.)
pub(super) const UNUSED_MAILBOX_PAGE: &str = unused_page!("mailbox = ?2 AND ");

pub(super) const COLUMNS: &str = "mailbox, client, provider, state, version, key_id, nonce, ciphertext, created_at, \
     rotated_at, revoked_at, revoke_reason, last_used_at, last_verified_at, last_probe_outcome, generation";

pub(super) fn outcome_from(v: Option<i64>) -> Option<ProbeOutcome> {
    v.and_then(|v| i32::try_from(v).ok()).and_then(ProbeOutcome::from_i32)
}

pub(super) fn read_row(r: &Row<'_>) -> rusqlite::Result<CredentialRow> {
    let state = match r.get::<_, i64>(3)? {
        1 => CredentialState::Active,
        _ => CredentialState::Revoked,
    };
    let key_id: Option<u32> = r.get(5)?;
    let nonce: Option<Vec<u8>> = r.get(6)?;
    let ciphertext: Option<Vec<u8>> = r.get(7)?;
    let code = match (key_id, nonce, ciphertext) {
        (Some(key_id), Some(nonce), Some(ciphertext)) => {
            // A nonce of the wrong length cannot authenticate; an all-zero one makes that explicit.
            let nonce = nonce.try_into().unwrap_or([0u8; 24]);
            // Likewise a generation of the wrong length: it opens nothing.
            let generation = r.get::<_, Option<Vec<u8>>>(15)?.map(|g| g.try_into().unwrap_or([0u8; 16]));
            Some(StoredCode { key_id, generation, sealed: Sealed { nonce, ciphertext } })
        }
        _ => None,
    };
    Ok(CredentialRow {
        mailbox: r.get(0)?,
        client: r.get(1)?,
        provider: r.get(2)?,
        state,
        version: r.get::<_, i64>(4)?.try_into().unwrap_or(0),
        code,
        created_at: r.get(8)?,
        rotated_at: r.get(9)?,
        revoked_at: r.get(10)?,
        revoke_reason: r.get(11)?,
        last_used_at: r.get(12)?,
        last_verified_at: r.get(13)?,
        last_probe_outcome: outcome_from(r.get(14)?),
    })
}

pub(super) fn get_row(conn: &Connection, mailbox: &str, client: &str) -> Result<Option<CredentialRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM credentials WHERE mailbox = ?1 AND client = ?2");
    Ok(conn.prepare_cached(&sql)?.query_row(params![mailbox, client], read_row).optional()?)
}

pub(super) fn insert_audit(tx: &rusqlite::Transaction<'_>, e: &AuditEvent) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO audit_events (at, caller, caller_role, rpc, mailbox, client, outcome, probe_outcome, count, \
         first_at, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        e.at,
        e.caller,
        e.caller_role,
        e.rpc,
        e.mailbox,
        e.client,
        e.outcome,
        e.probe_outcome.map(|o| o as i32),
        i64::try_from(e.count).unwrap_or(i64::MAX),
        e.first_at,
        e.reason
    ])?;
    Ok(())
}

/// A List page's SQL for the filters `q` sets. A mailbox is a prefix of the primary key; a
/// client alone reads `credentials_by_client` from the cursor's mailbox on. (With only the
/// `?N IS NULL OR` filters the planner walked the primary key to its end: 0.6 s for one
/// mailbox's page at a million bindings.)
pub(super) fn list_sql(q: &ListQuery) -> String {
    let filter = match (&q.mailbox, &q.client) {
        (Some(_), _) => "WHERE mailbox = ?1 AND",
        (None, Some(_)) => "INDEXED BY credentials_by_client WHERE client = ?2 AND mailbox >= ?4 AND",
        (None, None) => "WHERE",
    };
    format!(
        "SELECT {COLUMNS} FROM credentials {filter} (?1 IS NULL OR mailbox = ?1) AND (?2 IS NULL OR client = ?2) AND (?3 OR state = 1) \
                 AND (?7 IS NULL OR (state = 1 AND last_probe_outcome = ?7)) \
                 AND (?8 IS NULL OR (state = 1 AND coalesce(last_verified_at, created_at) < ?8)) \
                 AND (mailbox, client) > (?4, ?5) ORDER BY mailbox, client LIMIT ?6"
    )
}

pub(super) fn list(conn: &Connection, q: &ListQuery) -> Result<Vec<CredentialRow>, StoreError> {
    let (after_m, after_c) = q.after.clone().unwrap_or_default();
    let mut stmt = conn.prepare_cached(&list_sql(q))?;
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let outcome = q.last_probe_outcome.map(|o| o as i32);
    let rows = stmt.query_map(
        params![q.mailbox, q.client, q.include_revoked, after_m, after_c, limit, outcome, q.verified_before],
        read_row,
    )?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn list_unused(conn: &Connection, q: &UnusedQuery) -> Result<Vec<CredentialRow>, StoreError> {
    let page = if q.mailbox.is_some() { UNUSED_MAILBOX_PAGE } else { UNUSED_PAGE };
    let sql = format!("SELECT {COLUMNS} FROM credentials {page}");
    let (k, m, c) = q.after.clone().unwrap_or((i64::MIN, String::new(), String::new()));
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![q.cutoff, q.mailbox, k, m, c, limit], read_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// An audit page's SQL for the filters `q` sets. SQLite picks no index by a filter written as
/// `?N IS NULL OR ...`, so each shape names its index: a pair reads `audit_events_by_pair`, a
/// caller `audit_events_by_caller`, the rest walks `audit_events_by_time` (a mailbox alone too:
/// the pair index would sort the mailbox's whole history for every page). With one query for
/// all, a page for one pair walked the whole trail: 11 s at 4M events.
pub(super) fn audit_page_sql(q: &AuditQuery) -> &'static str {
    macro_rules! page {
        ($from:literal) => {
            concat!(
                "SELECT id, at, caller, caller_role, rpc, mailbox, client, outcome, probe_outcome, count, first_at, reason \
                 FROM audit_events ",
                $from,
                " (at, id) < (?1, ?8) AND (?2 IS NULL OR mailbox = ?2) AND (?3 IS NULL OR client = ?3) \
                 AND (?4 IS NULL OR caller = ?4) AND (?5 IS NULL OR at >= ?5) AND (?6 IS NULL OR at < ?6) \
                 ORDER BY at DESC, id DESC LIMIT ?7"
            )
        };
    }
    match (&q.mailbox, &q.client, &q.caller) {
        (Some(_), Some(_), _) => page!("INDEXED BY audit_events_by_pair WHERE mailbox = ?2 AND client = ?3 AND"),
        (_, _, Some(_)) => page!("INDEXED BY audit_events_by_caller WHERE caller = ?4 AND"),
        (_, _, None) => page!("WHERE"),
    }
}

pub(super) fn audit_events(conn: &Connection, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(audit_page_sql(q))?;
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let (before, before_id) = q.before.unwrap_or((i64::MAX, i64::MAX));
    let rows =
        stmt.query_map(params![before, q.mailbox, q.client, q.caller, q.since, q.until, limit, before_id], |r| {
            Ok(AuditRecord {
                id: r.get(0)?,
                event: AuditEvent {
                    at: r.get(1)?,
                    caller: r.get(2)?,
                    caller_role: r.get(3)?,
                    rpc: r.get(4)?,
                    mailbox: r.get(5)?,
                    client: r.get(6)?,
                    outcome: r.get(7)?,
                    probe_outcome: outcome_from(r.get(8)?),
                    count: r.get::<_, i64>(9)?.try_into().unwrap_or(0),
                    first_at: r.get(10)?,
                    reason: r.get(11)?,
                },
            })
        })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
/// Active rows due for verification, by the index credentials_by_verification.
/// The sweep's page, from past (?2, ?3, ?4) on. SQLite takes no range from a row value next to a
/// bound on its first column, hence the `>= ?2`: a range on the time, the ties filtered.
pub(super) const DUE_PAGE: &str = "INDEXED BY credentials_by_verification \
     WHERE state = 1 AND coalesce(last_verified_at, created_at) < ?1 \
     AND coalesce(last_verified_at, created_at) >= ?2 \
     AND (coalesce(last_verified_at, created_at), mailbox, client) > (?2, ?3, ?4) \
     ORDER BY coalesce(last_verified_at, created_at), mailbox, client LIMIT ?5";

pub(super) fn due_for_verification(
    conn: &Connection,
    before: Millis,
    after: Option<&DuePosition>,
    limit: usize,
) -> Result<Vec<CredentialRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM credentials {DUE_PAGE}");
    let start = (i64::MIN, String::new(), String::new());
    let (k, m, c) = after.unwrap_or(&start);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![before, k, m, c, i64::try_from(limit).unwrap_or(i64::MAX)], read_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Active bindings by last probe outcome (a scan of the narrow `credentials_by_outcome_state`).
pub(super) const COUNT_BY_OUTCOME: &str =
    "SELECT last_probe_outcome, count(*) FROM credentials WHERE state = 1 GROUP BY last_probe_outcome";
/// Bindings by state (the same index).
pub(super) const COUNT_BY_STATE: &str =
    "SELECT count(*) FILTER (WHERE state = 1), count(*) FILTER (WHERE state = 2) FROM credentials";

pub(super) fn count_by_outcome(conn: &Connection) -> Result<Vec<(Option<ProbeOutcome>, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(COUNT_BY_OUTCOME)?;
    let rows = stmt.query_map([], |r| Ok((outcome_from(r.get(0)?), r.get::<_, i64>(1)?.try_into().unwrap_or(0))))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn count_by_state(conn: &Connection) -> Result<(u64, u64), StoreError> {
    let (a, r): (i64, i64) = conn.query_row(COUNT_BY_STATE, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((a.try_into().unwrap_or(0), r.try_into().unwrap_or(0)))
}

//! The three listings: requests to store queries (filters, page size, keyset tokens) and pages
//! back to responses.

use std::time::Duration;

use super::page_token;
use crate::ids::{ClientId, InvalidId, Mailbox};
use crate::proto::{self, timestamp};
use crate::store::{AuditQuery, ListQuery, UnusedQuery};
use crate::vault::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Vault, VaultError};

/// The review's default window: a quarter.
pub const DEFAULT_UNUSED_FOR: Duration = Duration::from_secs(90 * 24 * 3600);

/// An empty filter matches all; a non-empty one must be a valid identifier.
fn filter<T>(raw: &str, parse: impl FnOnce(&str) -> Result<T, InvalidId>) -> Result<Option<T>, VaultError> {
    if raw.trim().is_empty() { Ok(None) } else { Ok(Some(parse(raw)?)) }
}

fn mailbox_filter(raw: &str) -> Result<Option<String>, VaultError> {
    Ok(filter(raw, Mailbox::parse)?.map(|m| m.as_str().to_owned()))
}

fn client_filter(raw: &str) -> Result<Option<String>, VaultError> {
    Ok(filter(raw, ClientId::parse)?.map(|c| c.as_str().to_owned()))
}

fn page_size(requested: u32) -> Result<usize, VaultError> {
    match usize::try_from(requested).unwrap_or(usize::MAX) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        _ => Err(VaultError::InvalidField { field: "page_size", reason: format!("must be at most {MAX_PAGE_SIZE}") }),
    }
}

fn millis(field: &'static str, t: &prost_types::Timestamp) -> Result<i64, VaultError> {
    let bad = || VaultError::InvalidField { field, reason: "is not a valid timestamp".into() };
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000).ok_or_else(bad)?;
    t.seconds.checked_mul(1000).and_then(|ms| ms.checked_add(i64::from(nanos / 1_000_000))).ok_or_else(bad)
}

fn number(field: &'static str, s: &str) -> Result<i64, VaultError> {
    s.parse().map_err(|_| VaultError::InvalidField { field, reason: "not a token from this listing".into() })
}

pub async fn credentials(
    vault: &Vault,
    req: proto::ListCredentialsRequest,
) -> Result<proto::ListCredentialsResponse, VaultError> {
    let after = page_token::decode("credentials", &req.page_token, 2)?.map(|f| (f[0].clone(), f[1].clone()));
    let query = ListQuery {
        mailbox: mailbox_filter(&req.mailbox)?,
        client: client_filter(&req.client)?,
        include_revoked: req.include_revoked,
        after,
        limit: page_size(req.page_size)?,
    };
    let (rows, next) = vault.list(query).await?;
    Ok(proto::ListCredentialsResponse {
        credentials: rows.into_iter().map(Into::into).collect(),
        next_page_token: next.map(|(m, c)| page_token::encode("credentials", &[&m, &c])).unwrap_or_default(),
    })
}

pub async fn unused(
    vault: &Vault,
    req: proto::ListUnusedClientsRequest,
) -> Result<proto::ListUnusedClientsResponse, VaultError> {
    let limit = page_size(req.page_size)?;
    let mailbox = mailbox_filter(&req.mailbox)?;
    // Later pages keep the first page's cut-off, so the set does not shift with the clock.
    let (cutoff, after) = if let Some(f) = page_token::decode("unused", &req.page_token, 4)? {
        (number("page_token", &f[0])?, Some((number("page_token", &f[1])?, f[2].clone(), f[3].clone())))
    } else {
        let unused_for = match req.unused_for {
            None => DEFAULT_UNUSED_FOR,
            Some(d) => Duration::try_from(d).map_err(|_| VaultError::InvalidField {
                field: "unused_for",
                reason: "must be a non-negative duration".into(),
            })?,
        };
        let span = i64::try_from(unused_for.as_millis()).unwrap_or(i64::MAX);
        (vault.now_millis().saturating_sub(span), None)
    };
    let (rows, more) = vault.list_unused(UnusedQuery { cutoff, mailbox, after, limit }).await?;
    let next_page_token = match rows.last() {
        Some(r) if more => {
            let key = r.last_used_at.unwrap_or(r.created_at);
            page_token::encode("unused", &[&cutoff.to_string(), &key.to_string(), &r.mailbox, &r.client])
        }
        _ => String::new(),
    };
    Ok(proto::ListUnusedClientsResponse {
        clients: rows
            .into_iter()
            .map(|r| proto::UnusedClient {
                last_used_at: r.last_used_at.map(timestamp),
                created_at: Some(timestamp(r.created_at)),
                last_probe_outcome: r.last_probe_outcome.map_or(proto::ProbeOutcome::Unspecified, Into::into).into(),
                mailbox: r.mailbox,
                client: r.client,
            })
            .collect(),
        next_page_token,
    })
}

pub async fn audit(
    vault: &Vault,
    req: proto::ListAuditEventsRequest,
) -> Result<proto::ListAuditEventsResponse, VaultError> {
    let before_id =
        page_token::decode("audit", &req.page_token, 1)?.map(|f| number("page_token", &f[0])).transpose()?;
    let caller = req.caller.trim();
    let query = AuditQuery {
        mailbox: mailbox_filter(&req.mailbox)?,
        client: client_filter(&req.client)?,
        caller: (!caller.is_empty()).then(|| caller.to_owned()),
        since: req.since.as_ref().map(|t| millis("since", t)).transpose()?,
        until: req.until.as_ref().map(|t| millis("until", t)).transpose()?,
        before_id,
        limit: page_size(req.page_size)?,
    };
    let (records, more) = vault.audit_events(query).await?;
    let next_page_token = match records.last() {
        Some(r) if more => page_token::encode("audit", &[&r.id.to_string()]),
        _ => String::new(),
    };
    Ok(proto::ListAuditEventsResponse { events: records.into_iter().map(Into::into).collect(), next_page_token })
}

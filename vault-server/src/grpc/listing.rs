//! The three listings: requests to store queries (filters, page size, keyset tokens) and pages
//! back to responses.

use std::time::Duration;

use super::page_token;
use crate::ids::{ClientId, InvalidId, Mailbox};
use crate::proto::{self, timestamp};
use crate::store::{AuditQuery, ListQuery, UnusedQuery};
use crate::vault::review::{self, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::vault::{Vault, VaultError};

/// An empty filter matches all; a non-empty one must be a valid identifier.
fn filter<T>(raw: &str, parse: impl FnOnce(&str) -> Result<T, InvalidId>) -> Result<Option<T>, VaultError> {
    if raw.trim().is_empty() { Ok(None) } else { Ok(Some(parse(raw)?)) }
}

fn mailbox_filter(raw: &str) -> Result<Option<String>, VaultError> {
    Ok(filter(raw, |m| Mailbox::parse(m))?.map(|m| m.as_str().to_owned()))
}

fn client_filter(raw: &str) -> Result<Option<String>, VaultError> {
    Ok(filter(raw, |c| ClientId::parse(c))?.map(|c| c.as_str().to_owned()))
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

/// A non-negative `google.protobuf.Duration` with nanos in range (as the type requires).
fn duration(field: &'static str, d: &prost_types::Duration) -> Result<Duration, VaultError> {
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000);
    match (u64::try_from(d.seconds), nanos) {
        (Ok(secs), Some(nanos)) => Ok(Duration::new(secs, nanos)),
        _ => Err(VaultError::InvalidField {
            field,
            reason: "must be a non-negative duration with nanos in [0, 999999999]".into(),
        }),
    }
}

fn number(field: &'static str, s: &str) -> Result<i64, VaultError> {
    s.parse().map_err(|_| VaultError::InvalidField { field, reason: "not a token from this listing".into() })
}

/// A listing's name with a fingerprint of the filters its page tokens do not carry: a token
/// works only with the filters that made it (with others it would quietly list something else).
fn listing(kind: &str, filters: &[&str]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(filters.join("\u{1f}").as_bytes());
    format!("{kind}.{}", hex::encode(&digest[..6]))
}

fn credentials_listing(req: &proto::ListCredentialsRequest) -> Result<String, VaultError> {
    let (mailbox, client) =
        (mailbox_filter(&req.mailbox)?.unwrap_or_default(), client_filter(&req.client)?.unwrap_or_default());
    let (revoked, outcome) = (req.include_revoked.to_string(), req.last_probe_outcome.to_string());
    // The cut-off travels in the token; whether there is one is the request's.
    let cutoff = req.not_verified_for.is_some().to_string();
    Ok(listing("credentials", &[&mailbox, &client, &revoked, &outcome, &cutoff]))
}

fn unused_listing(req: &proto::ListUnusedClientsRequest) -> Result<String, VaultError> {
    Ok(listing("unused", &[&mailbox_filter(&req.mailbox)?.unwrap_or_default()]))
}

fn audit_listing(req: &proto::ListAuditEventsRequest) -> Result<String, VaultError> {
    let (mailbox, client) =
        (mailbox_filter(&req.mailbox)?.unwrap_or_default(), client_filter(&req.client)?.unwrap_or_default());
    // As the query reads them: milliseconds.
    let at = |field, t: &Option<prost_types::Timestamp>| {
        t.as_ref().map(|t| millis(field, t).map(|ms| ms.to_string())).transpose().map(Option::unwrap_or_default)
    };
    let (since, until) = (at("since", &req.since)?, at("until", &req.until)?);
    Ok(listing("audit", &[&mailbox, &client, req.caller.trim(), &since, &until]))
}

/// A ListCredentials request as a store query, its verification cut-off taken from `now` on a
/// first page; the fuzz target for listings calls it too.
pub fn credentials_query(req: &proto::ListCredentialsRequest, now: i64) -> Result<ListQuery, VaultError> {
    let (after, verified_before) = if let Some(f) = page_token::decode(&credentials_listing(req)?, &req.page_token, 3)?
    {
        let cutoff = if f[2].is_empty() { None } else { Some(number("page_token", &f[2])?) };
        (Some((f[0].clone(), f[1].clone())), cutoff)
    } else {
        let unchecked_for = req.not_verified_for.map(|d| duration("not_verified_for", &d)).transpose()?;
        (None, unchecked_for.map(|d| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))))
    };
    let last_probe_outcome =
        proto::ProbeOutcome::try_from(req.last_probe_outcome).map(proto::domain_outcome).map_err(|_| {
            VaultError::InvalidField { field: "last_probe_outcome", reason: "is not a ProbeOutcome".into() }
        })?;
    Ok(ListQuery {
        mailbox: mailbox_filter(&req.mailbox)?,
        client: client_filter(&req.client)?,
        include_revoked: req.include_revoked,
        last_probe_outcome,
        verified_before,
        after,
        limit: page_size(req.page_size)?,
    })
}

pub async fn credentials(
    vault: &Vault,
    req: proto::ListCredentialsRequest,
) -> Result<proto::ListCredentialsResponse, VaultError> {
    let query = credentials_query(&req, vault.now_millis())?;
    let kind = credentials_listing(&req)?;
    let cutoff = query.verified_before.map(|c| c.to_string()).unwrap_or_default();
    let page = vault.list(query).await?;
    let next_page_token =
        page.next_after().map(|r| page_token::encode(&kind, &[&r.mailbox, &r.client, &cutoff])).unwrap_or_default();
    Ok(proto::ListCredentialsResponse {
        credentials: page.items.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

/// A ListUnusedClients request as a store query, its cut-off taken from `now` on a first page.
pub fn unused_query(req: &proto::ListUnusedClientsRequest, now: i64) -> Result<UnusedQuery, VaultError> {
    let limit = page_size(req.page_size)?;
    let mailbox = mailbox_filter(&req.mailbox)?;
    // Later pages keep the first page's cut-off, so the set does not shift with the clock.
    let (cutoff, after) = if let Some(f) = page_token::decode(&unused_listing(req)?, &req.page_token, 4)? {
        (number("page_token", &f[0])?, Some((number("page_token", &f[1])?, f[2].clone(), f[3].clone())))
    } else {
        let unused_for = req.unused_for.map(|d| duration("unused_for", &d)).transpose()?;
        (review::cutoff(now, unused_for), None)
    };
    Ok(UnusedQuery { cutoff, mailbox, after, limit })
}

pub async fn unused(
    vault: &Vault,
    req: proto::ListUnusedClientsRequest,
) -> Result<proto::ListUnusedClientsResponse, VaultError> {
    let query = unused_query(&req, vault.now_millis())?;
    let kind = unused_listing(&req)?;
    let cutoff = query.cutoff;
    let page = vault.list_unused(query).await?;
    let next_page_token = page
        .next_after()
        .map(|r| {
            let (key, mailbox, client) = review::position(r);
            page_token::encode(&kind, &[&cutoff.to_string(), &key.to_string(), &mailbox, &client])
        })
        .unwrap_or_default();
    Ok(proto::ListUnusedClientsResponse {
        clients: page
            .items
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

/// A ListAuditEvents request as a store query.
pub fn audit_query(req: &proto::ListAuditEventsRequest) -> Result<AuditQuery, VaultError> {
    let before = page_token::decode(&audit_listing(req)?, &req.page_token, 2)?
        .map(|f| Ok::<_, VaultError>((number("page_token", &f[0])?, number("page_token", &f[1])?)))
        .transpose()?;
    let caller = req.caller.trim();
    Ok(AuditQuery {
        mailbox: mailbox_filter(&req.mailbox)?,
        client: client_filter(&req.client)?,
        caller: (!caller.is_empty()).then(|| caller.to_owned()),
        since: req.since.as_ref().map(|t| millis("since", t)).transpose()?,
        until: req.until.as_ref().map(|t| millis("until", t)).transpose()?,
        before,
        limit: page_size(req.page_size)?,
    })
}

pub async fn audit(
    vault: &Vault,
    req: proto::ListAuditEventsRequest,
) -> Result<proto::ListAuditEventsResponse, VaultError> {
    let query = audit_query(&req)?;
    let kind = audit_listing(&req)?;
    let page = vault.audit_events(query).await?;
    let next_page_token = page
        .next_after()
        .map(|r| page_token::encode(&kind, &[&r.event.at.to_string(), &r.id.to_string()]))
        .unwrap_or_default();
    Ok(proto::ListAuditEventsResponse { events: page.items.into_iter().map(Into::into).collect(), next_page_token })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::{ClientId, Mailbox};
    use crate::secret::AuthCode;
    use crate::vault::testkit::{self, DAY, FakeClock};

    const NOW: i64 = 1_000 * DAY;

    fn ids(m: &str, c: &str) -> (Mailbox, ClientId) {
        (Mailbox::parse(m).unwrap(), ClientId::parse(c).unwrap())
    }

    async fn bind_at(vault: &Vault, clock: &FakeClock, at: i64, m: &str, c: &str) {
        clock.set(at);
        let (m, c) = ids(m, c);
        vault.bind(&testkit::admin(), m, c, AuthCode::new("abcd1234efgh5678"), None).await.unwrap();
    }

    async fn reveal_at(vault: &Vault, clock: &FakeClock, at: i64, m: &str, c: &str) {
        clock.set(at);
        let (m, c) = ids(m, c);
        vault.reveal(&testkit::client(c.as_str()), &m, &c).await.unwrap();
    }

    async fn page(vault: &Vault, token: &str, size: u32, unused_for: Option<i64>) -> proto::ListUnusedClientsResponse {
        let req = proto::ListUnusedClientsRequest {
            unused_for: unused_for.map(|ms| prost_types::Duration { seconds: ms / 1000, nanos: 0 }),
            mailbox: String::new(),
            page_size: size,
            page_token: token.to_owned(),
        };
        unused(vault, req).await.unwrap()
    }

    fn names(r: &proto::ListUnusedClientsResponse) -> Vec<String> {
        r.clients.iter().map(|c| format!("{}/{}", c.mailbox, c.client)).collect()
    }

    #[test]
    fn a_page_token_works_only_with_the_filters_that_made_it() {
        // Found by an attack: a token reused with other filters quietly listed something else.
        let first = proto::ListCredentialsRequest { mailbox: "A@sina.com".into(), ..Default::default() };
        let token = page_token::encode(&credentials_listing(&first).unwrap(), &["a@sina.com", "sender", ""]);
        let next = |mailbox: &str, include_revoked| proto::ListCredentialsRequest {
            mailbox: mailbox.into(),
            include_revoked,
            page_token: token.clone(),
            ..Default::default()
        };
        // The same filters, canonically: the token works.
        assert!(credentials_query(&next(" a@SINA.com", false), NOW).is_ok());
        for other in [next("zzz@sina.com", false), next("", false), next("a@sina.com", true)] {
            let e = credentials_query(&other, NOW).unwrap_err();
            assert!(matches!(&e, VaultError::InvalidField { field: "page_token", .. }), "{e:?}");
        }
        // A token from a walk without a verification cut-off, reused with one (a review found it).
        let unfiltered = page_token::encode(
            &credentials_listing(&proto::ListCredentialsRequest::default()).unwrap(),
            &["a@sina.com", "x", ""],
        );
        let with_cutoff = proto::ListCredentialsRequest {
            not_verified_for: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
            page_token: unfiltered,
            ..Default::default()
        };
        assert!(credentials_query(&with_cutoff, NOW).is_err());
        let audit = proto::ListAuditEventsRequest { caller: "tk_aaaaaaaaaaaa".into(), ..Default::default() };
        let token = page_token::encode(&audit_listing(&audit).unwrap(), &["5", "6"]);
        let moved =
            proto::ListAuditEventsRequest { caller: "tk_bbbbbbbbbbbb".into(), page_token: token, ..Default::default() };
        assert!(audit_query(&moved).is_err());
    }

    #[tokio::test]
    async fn the_ninety_day_boundary_is_exact_and_revoked_pairs_are_excluded() {
        let clock = Arc::new(FakeClock::default());
        let (_tmp, vault) = testkit::vault(clock.clone());
        let cutoff = NOW - 90 * DAY;
        bind_at(&vault, &clock, NOW - 200 * DAY, "never@sina.com", "old").await;
        bind_at(&vault, &clock, cutoff - 1, "never@sina.com", "justbefore").await;
        bind_at(&vault, &clock, cutoff, "never@sina.com", "atcutoff").await;
        bind_at(&vault, &clock, NOW - DAY, "never@sina.com", "new").await;
        bind_at(&vault, &clock, NOW - 300 * DAY, "used@sina.com", "stale").await;
        reveal_at(&vault, &clock, cutoff - 1, "used@sina.com", "stale").await;
        bind_at(&vault, &clock, NOW - 300 * DAY, "used@sina.com", "fresh").await;
        reveal_at(&vault, &clock, cutoff, "used@sina.com", "fresh").await;
        bind_at(&vault, &clock, NOW - 300 * DAY, "gone@sina.com", "revoked").await;
        let (m, c) = ids("gone@sina.com", "revoked");
        vault.revoke(&testkit::admin(), m, c, "left", None).await.unwrap();
        clock.set(NOW);

        // Default window: 90 days. Oldest activity first; never-used pairs count from binding.
        let r = page(&vault, "", 0, None).await;
        assert_eq!(names(&r), ["never@sina.com/old", "never@sina.com/justbefore", "used@sina.com/stale"]);
        assert!(r.next_page_token.is_empty());
        let stale = &r.clients[2];
        assert_eq!(stale.last_used_at.as_ref().map(|t| t.seconds * 1000), Some((cutoff - 1) / 1000 * 1000));
        assert!(r.clients[0].last_used_at.is_none());
        assert_eq!(r.clients[0].created_at.as_ref().unwrap().seconds, (NOW - 200 * DAY) / 1000);
        assert_eq!(r.clients[0].last_probe_outcome(), proto::ProbeOutcome::Accepted);

        // One millisecond later, the pairs at the cut-off fall out of the window too.
        clock.set(NOW + 1);
        let r = page(&vault, "", 0, None).await;
        assert_eq!(r.clients.len(), 5);
        // A shorter window lists more: with half a day, even the pair bound yesterday.
        clock.set(NOW);
        assert_eq!(page(&vault, "", 0, Some(2 * DAY)).await.clients.len(), 5);
        assert_eq!(page(&vault, "", 0, Some(DAY / 2)).await.clients.len(), 6);
    }

    #[tokio::test]
    async fn paging_is_stable_while_rows_change() {
        let clock = Arc::new(FakeClock::default());
        let (_tmp, vault) = testkit::vault(clock.clone());
        for i in 0..7 {
            bind_at(&vault, &clock, NOW - (200 - i) * DAY, &format!("u{i}@sina.com"), "sender").await;
        }
        clock.set(NOW);
        let first = page(&vault, "", 3, None).await;
        assert_eq!(names(&first), ["u0@sina.com/sender", "u1@sina.com/sender", "u2@sina.com/sender"]);
        assert!(!first.next_page_token.is_empty());
        // Between pages: u1 (already listed) and u4 (not yet) are used; u5 is revoked; u9 is bound
        // long ago by a clock jump backwards (it sorts before the token and is not re-listed).
        reveal_at(&vault, &clock, NOW, "u1@sina.com", "sender").await;
        reveal_at(&vault, &clock, NOW, "u4@sina.com", "sender").await;
        let (m, c) = ids("u5@sina.com", "sender");
        vault.revoke(&testkit::admin(), m, c, "", None).await.unwrap();
        bind_at(&vault, &clock, NOW - 300 * DAY, "u9@sina.com", "sender").await;
        clock.set(NOW + 30 * DAY);
        let second = page(&vault, &first.next_page_token, 3, None).await;
        assert_eq!(names(&second), ["u3@sina.com/sender", "u6@sina.com/sender"]);
        assert!(second.next_page_token.is_empty());
        // A token from another listing, or garbage, is refused.
        let bad = proto::ListUnusedClientsRequest { page_token: "bm9wZQ".into(), ..Default::default() };
        assert!(matches!(unused(&vault, bad).await, Err(VaultError::InvalidField { field: "page_token", .. })));
        let negative = proto::ListUnusedClientsRequest {
            unused_for: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
            ..Default::default()
        };
        assert!(matches!(unused(&vault, negative).await, Err(VaultError::InvalidField { field: "unused_for", .. })));
    }

    #[tokio::test]
    async fn the_mailbox_filter_and_the_audit_listing() {
        let clock = Arc::new(FakeClock::default());
        let (_tmp, vault) = testkit::vault(clock.clone());
        bind_at(&vault, &clock, NOW - 200 * DAY, "a@sina.com", "sender").await;
        bind_at(&vault, &clock, NOW - 200 * DAY, "b@sina.com", "sender").await;
        reveal_at(&vault, &clock, NOW - 100 * DAY, "a@sina.com", "sender").await;
        reveal_at(&vault, &clock, NOW - 99 * DAY, "a@sina.com", "sender").await;
        clock.set(NOW);
        let req = proto::ListUnusedClientsRequest { mailbox: "A@sina.com".into(), ..Default::default() };
        assert_eq!(names(&unused(&vault, req).await.unwrap()), ["a@sina.com/sender"]);

        let all = audit(&vault, proto::ListAuditEventsRequest::default()).await.unwrap();
        let rpcs: Vec<&str> = all.events.iter().map(|e| e.rpc.as_str()).collect();
        assert_eq!(rpcs, ["Reveal", "Bind", "Bind"], "newest first");
        let reveal = &all.events[0];
        assert_eq!(
            (reveal.count, reveal.caller.as_str(), reveal.caller_role.as_str()),
            (2, "tk_sender", "client:sender")
        );
        assert_eq!(reveal.first_at.as_ref().unwrap().seconds, (NOW - 100 * DAY) / 1000);
        assert_eq!(reveal.at.as_ref().unwrap().seconds, (NOW - 99 * DAY) / 1000);
        let paged = audit(&vault, proto::ListAuditEventsRequest { page_size: 2, ..Default::default() }).await.unwrap();
        assert_eq!(paged.events.len(), 2);
        let rest = audit(
            &vault,
            proto::ListAuditEventsRequest { page_size: 2, page_token: paged.next_page_token, ..Default::default() },
        )
        .await
        .unwrap();
        assert_eq!(rest.events.len(), 1);
        assert!(rest.next_page_token.is_empty());
        let since = prost_types::Timestamp { seconds: (NOW - 150 * DAY) / 1000, nanos: 0 };
        let recent =
            audit(&vault, proto::ListAuditEventsRequest { since: Some(since), ..Default::default() }).await.unwrap();
        assert_eq!(recent.events.len(), 1);
        let by_admin = audit(&vault, proto::ListAuditEventsRequest { caller: "tk_admin".into(), ..Default::default() })
            .await
            .unwrap();
        assert!(by_admin.events.iter().all(|e| e.rpc == "Bind") && by_admin.events.len() == 2);
        // Only events before `until`: the Binds, not the later Reveals.
        let until = prost_types::Timestamp { seconds: (NOW - 150 * DAY) / 1000, nanos: 0 };
        let before =
            audit(&vault, proto::ListAuditEventsRequest { until: Some(until), ..Default::default() }).await.unwrap();
        assert_eq!(before.events.iter().map(|e| e.rpc.as_str()).collect::<Vec<_>>(), ["Bind", "Bind"]);
        // A review page token is for the mailbox filter that made it.
        let first =
            unused(&vault, proto::ListUnusedClientsRequest { page_size: 1, ..Default::default() }).await.unwrap();
        assert!(!first.next_page_token.is_empty());
        let moved = proto::ListUnusedClientsRequest {
            mailbox: "a@sina.com".into(),
            page_token: first.next_page_token,
            ..Default::default()
        };
        assert!(matches!(unused(&vault, moved).await, Err(VaultError::InvalidField { field: "page_token", .. })));
    }

    #[tokio::test]
    async fn durations_out_of_range_are_refused() {
        let clock = Arc::new(FakeClock::default());
        let (_tmp, vault) = testkit::vault(clock);
        for (seconds, nanos) in [(0, -5), (0, 2_000_000_000), (-1, 0), (5, 1_000_000_000)] {
            let req = proto::ListUnusedClientsRequest {
                unused_for: Some(prost_types::Duration { seconds, nanos }),
                ..Default::default()
            };
            let err = unused(&vault, req).await.unwrap_err();
            assert!(
                matches!(err, VaultError::InvalidField { field: "unused_for", .. }),
                "{seconds}s {nanos}ns: {err:?}"
            );
        }
        let ok = proto::ListUnusedClientsRequest {
            unused_for: Some(prost_types::Duration { seconds: 5, nanos: 999_999_999 }),
            ..Default::default()
        };
        assert!(unused(&vault, ok).await.is_ok());
    }
}

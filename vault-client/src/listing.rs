//! Listings, one way for all three: a plain filter and a page token in, a [`Page`] out; the
//! `*_all` helpers walk every page.

use std::time::{Duration, SystemTime};

use crate::types::{AuditEvent, Credential, Page, UnusedClient};
use crate::{Error, VaultClient, proto};

/// Which bindings [`VaultClient::list`] returns; the default is every active one.
#[derive(Debug, Clone, Default)]
pub struct CredentialFilter {
    /// Only this mailbox; empty for all.
    pub mailbox: String,
    /// Only this client id; empty for all.
    pub client: String,
    /// Tombstones too.
    pub include_revoked: bool,
    /// Only active bindings whose last probe had this outcome (e.g. REJECTED: dead codes).
    pub last_probe_outcome: Option<proto::ProbeOutcome>,
    /// Only active bindings not verified for at least this long.
    pub not_verified_for: Option<Duration>,
}

/// Which clients [`VaultClient::list_unused`] returns (the quarterly review).
#[derive(Debug, Clone, Default)]
pub struct UnusedFilter {
    /// No Reveal within this long (`None`: 90 days).
    pub unused_for: Option<Duration>,
    /// Only this mailbox; empty for all.
    pub mailbox: String,
}

/// Which audit events [`VaultClient::audit_events`] returns; the default is all.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this mailbox; empty for all.
    pub mailbox: String,
    /// Only this client id; empty for all.
    pub client: String,
    /// Only this caller (a token id, or `system`); empty for all.
    pub caller: String,
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
    /// Only events before this time.
    pub until: Option<SystemTime>,
}

fn duration(d: Duration) -> Result<prost_types::Duration, Error> {
    prost_types::Duration::try_from(d).map_err(|_| Error::InvalidArgument { message: "duration out of range".into() })
}

impl VaultClient {
    /// One page of bindings' metadata, by mailbox then client (admin). Start with an empty
    /// `page_token`.
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// use vault_client::{CredentialFilter, ProbeOutcome};
    /// let dead = CredentialFilter { last_probe_outcome: Some(ProbeOutcome::Rejected), ..Default::default() };
    /// let mut token = String::new();
    /// loop {
    ///     let page = vault.list(&dead, &token).await?;
    ///     for c in &page.items {
    ///         println!("{} {}: the provider refuses its code; rotate it", c.mailbox, c.client);
    ///     }
    ///     if page.next_page_token.is_empty() {
    ///         break;
    ///     }
    ///     token = page.next_page_token;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list(&mut self, filter: &CredentialFilter, page_token: &str) -> Result<Page<Credential>, Error> {
        let request = proto::ListCredentialsRequest {
            mailbox: filter.mailbox.clone(),
            client: filter.client.clone(),
            include_revoked: filter.include_revoked,
            last_probe_outcome: filter.last_probe_outcome.map_or(0, Into::into),
            not_verified_for: filter.not_verified_for.map(duration).transpose()?,
            page_size: 0,
            page_token: page_token.to_owned(),
        };
        let page = crate::retry::read(self, request, |mut c, r| async move { c.list_credentials(r).await }).await?;
        Ok(Page {
            items: page.credentials.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        })
    }

    /// One page of the quarterly review: active bindings with no Reveal within
    /// `filter.unused_for`, oldest activity first (admin).
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// use vault_client::UnusedFilter;
    /// let page = vault.list_unused(&UnusedFilter::default(), "").await?;
    /// for c in page.items {
    ///     println!("{} {} last used {:?}", c.mailbox, c.client, c.last_used_at);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_unused(&mut self, filter: &UnusedFilter, page_token: &str) -> Result<Page<UnusedClient>, Error> {
        let request = proto::ListUnusedClientsRequest {
            unused_for: filter.unused_for.map(duration).transpose()?,
            mailbox: filter.mailbox.clone(),
            page_size: 0,
            page_token: page_token.to_owned(),
        };
        let page = crate::retry::read(self, request, |mut c, r| async move { c.list_unused_clients(r).await }).await?;
        Ok(Page { items: page.clients.into_iter().map(Into::into).collect(), next_page_token: page.next_page_token })
    }

    /// One page of the audit trail, newest first by time (admin).
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// use vault_client::AuditFilter;
    /// let filter = AuditFilter { mailbox: "alice@sina.com".into(), ..Default::default() };
    /// for e in vault.audit_events(&filter, "").await?.items {
    ///     println!("{} {} by {} ({}): {}", e.id, e.rpc, e.caller, e.caller_role, e.outcome);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn audit_events(&mut self, filter: &AuditFilter, page_token: &str) -> Result<Page<AuditEvent>, Error> {
        let request = proto::ListAuditEventsRequest {
            mailbox: filter.mailbox.clone(),
            client: filter.client.clone(),
            caller: filter.caller.clone(),
            since: filter.since.map(Into::into),
            until: filter.until.map(Into::into),
            page_size: 0,
            page_token: page_token.to_owned(),
        };
        let page = crate::retry::read(self, request, |mut c, r| async move { c.list_audit_events(r).await }).await?;
        Ok(Page { items: page.events.into_iter().map(Into::into).collect(), next_page_token: page.next_page_token })
    }

    /// Every binding `filter` matches: [`VaultClient::list`] with all pages walked.
    pub async fn list_all(&mut self, filter: &CredentialFilter) -> Result<Vec<Credential>, Error> {
        walk(usize::MAX, async |token| self.list(filter, &token).await).await
    }

    /// The whole quarterly review: [`VaultClient::list_unused`] with all pages walked.
    pub async fn unused_all(&mut self, filter: &UnusedFilter) -> Result<Vec<UnusedClient>, Error> {
        walk(usize::MAX, async |token| self.list_unused(filter, &token).await).await
    }

    /// Audit events `filter` matches, newest first, up to `limit`: [`VaultClient::audit_events`]
    /// with pages walked.
    pub async fn audit_all(&mut self, filter: &AuditFilter, limit: usize) -> Result<Vec<AuditEvent>, Error> {
        walk(limit, async |token| self.audit_events(filter, &token).await).await
    }
}

/// Fetches pages from the first (empty token) until the last or `limit` entries. A server
/// that hands back the token it was given would keep this going forever: that is an error.
async fn walk<T>(limit: usize, mut page: impl AsyncFnMut(String) -> Result<Page<T>, Error>) -> Result<Vec<T>, Error> {
    let (mut all, mut token) = (Vec::new(), String::new());
    while all.len() < limit {
        let next = page(token.clone()).await?;
        all.extend(next.items);
        if next.next_page_token.is_empty() {
            break;
        }
        if next.next_page_token == token {
            let message = "the vault answered a page with the token that asked for it".to_owned();
            return Err(Error::Other { code: crate::Code::Internal, message });
        }
        token = next.next_page_token;
    }
    all.truncate(limit);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn walks_every_page_and_stops_on_a_token_handed_back() {
        let mut served = 0;
        let pages = walk(usize::MAX, async |token: String| {
            served += 1;
            let next = if token.len() < 2 { format!("{token}x") } else { String::new() };
            Ok(Page { items: vec![token], next_page_token: next })
        })
        .await
        .unwrap();
        assert_eq!((pages, served), (vec![String::new(), "x".into(), "xx".into()], 3));

        let stuck = walk(usize::MAX, async |_| Ok(Page { items: vec![1], next_page_token: "same".into() })).await;
        assert!(matches!(stuck, Err(Error::Other { .. })), "{stuck:?}");
    }
}

//! Whole listings: filters as plain fields, every page walked.

use std::time::Duration;

use crate::{Error, VaultClient, proto};

/// Which bindings [`VaultClient::list_all`] returns; the default is every active one.
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

/// Which audit events [`VaultClient::audit_all`] returns; the default is all.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this mailbox; empty for all.
    pub mailbox: String,
    /// Only this client id; empty for all.
    pub client: String,
    /// Only this caller (a token id, or `system`); empty for all.
    pub caller: String,
}

fn duration(d: Duration) -> Result<prost_types::Duration, Error> {
    prost_types::Duration::try_from(d).map_err(|_| Error::InvalidArgument { message: "duration out of range".into() })
}

impl VaultClient {
    /// Every binding `filter` matches, all pages walked, by mailbox then client (admin).
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// use vault_client::{CredentialFilter, proto::ProbeOutcome};
    /// let dead = CredentialFilter { last_probe_outcome: Some(ProbeOutcome::Rejected), ..Default::default() };
    /// for c in vault.list_all(&dead).await? {
    ///     println!("{} {}: rotate it", c.mailbox, c.client);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_all(&mut self, filter: &CredentialFilter) -> Result<Vec<proto::Credential>, Error> {
        let mut request = proto::ListCredentialsRequest {
            mailbox: filter.mailbox.clone(),
            client: filter.client.clone(),
            include_revoked: filter.include_revoked,
            last_probe_outcome: filter.last_probe_outcome.map_or(0, Into::into),
            not_verified_for: filter.not_verified_for.map(duration).transpose()?,
            ..Default::default()
        };
        let mut all = Vec::new();
        loop {
            let page = self.list(request.clone()).await?;
            all.extend(page.credentials);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            request.page_token = page.next_page_token;
        }
    }

    /// The whole quarterly review: active bindings with no Reveal within `unused_for` (`None`:
    /// 90 days), oldest activity first, all pages walked (admin). `mailbox` empty for all.
    pub async fn unused_all(
        &mut self,
        unused_for: Option<Duration>,
        mailbox: &str,
    ) -> Result<Vec<proto::UnusedClient>, Error> {
        let (mut all, mut token) = (Vec::new(), String::new());
        loop {
            let page = self.list_unused(unused_for, mailbox, &token).await?;
            all.extend(page.clients);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }

    /// Audit events `filter` matches, newest first by time, up to `limit` (admin).
    pub async fn audit_all(&mut self, filter: &AuditFilter, limit: usize) -> Result<Vec<proto::AuditEvent>, Error> {
        let mut request = proto::ListAuditEventsRequest {
            mailbox: filter.mailbox.clone(),
            client: filter.client.clone(),
            caller: filter.caller.clone(),
            ..Default::default()
        };
        let mut all = Vec::new();
        while all.len() < limit {
            let page = self.audit_events(request.clone()).await?;
            all.extend(page.events);
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        all.truncate(limit);
        Ok(all)
    }
}

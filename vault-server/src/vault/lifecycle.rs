//! The changes: Bind, Rotate, Revoke, Verify. Each holds its pair's lock, answers a remembered
//! request id (see `requests`), does the cheap checks first (format, state, version: they cost
//! no probe budget), probes, then commits one short transaction with its audit event (and the
//! request, if it has an id). A code the provider refused is audited too (no change).

use std::sync::Arc;

use prost::Message as _;

use super::requests::{Answer, Prior};
use super::{Holder, SHARING_UNCHECKED, Vault, VaultError};
use crate::caller::Caller;
use crate::ids::{ClientId, Mailbox, RequestId};
use crate::outcome::ProbeOutcome;
use crate::probe::ProbeReport;
use crate::proto;
use crate::provider::Provider;
use crate::secret::AuthCode;

use crate::store::{
    AuditEvent, CredentialRow, CredentialState, Millis, NewBinding, ProbeRecord, RevokeChange, RotateChange, StoredCode,
};

/// Longest revoke reason kept.
const MAX_REASON_CHARS: usize = 500;

/// The result of a rotate: the new row, the probe that admitted the new code, and whether the
/// provider still accepts the old one (unset if it could not be probed).
#[derive(Debug)]
pub struct Rotated {
    pub row: CredentialRow,
    pub probe: ProbeReport,
    pub previous_code_probe: Option<ProbeReport>,
}

/// The result of a revoke: the tombstone, and whether the provider still accepts the destroyed
/// code (unset if it could not be probed).
#[derive(Debug)]
pub struct Revoked {
    pub row: CredentialRow,
    pub probe: Option<ProbeReport>,
}

impl Vault {
    fn event(
        &self,
        caller: &Caller,
        rpc: &str,
        pair: (&Mailbox, &ClientId),
        outcome: &str,
        probe: Option<ProbeOutcome>,
    ) -> AuditEvent {
        let at = self.clock.now_millis();
        AuditEvent {
            at,
            caller: caller.token_id.clone(),
            caller_role: caller.role.to_string(),
            rpc: rpc.to_owned(),
            mailbox: pair.0.as_str().to_owned(),
            client: pair.1.as_str().to_owned(),
            outcome: outcome.to_owned(),
            probe_outcome: probe,
            count: 1,
            first_at: at,
            reason: String::new(),
        }
    }

    /// Passes an accepted report through; audits a refused one (no change was made) and fails.
    async fn require_accepted(&self, event: AuditEvent, report: ProbeReport) -> Result<ProbeReport, VaultError> {
        let failed = match report.accepted() {
            Ok(report) => return Ok(report),
            Err(failed) => failed,
        };
        let event = AuditEvent { outcome: format!("PROBE_{}", failed.report().outcome.as_str()), ..event };
        if let Err(e) = self.store.audit(event).await {
            tracing::warn!(error = %e, "could not audit a refused probe");
        }
        Err(VaultError::ProbeFailed(failed))
    }

    /// Checks the format, probes, and stores the code only if the provider accepted it.
    pub async fn bind(
        &self,
        caller: &Caller,
        mailbox: Mailbox,
        client: ClientId,
        code: AuthCode,
        request: Option<RequestId>,
    ) -> Result<Answer<(CredentialRow, ProbeReport)>, VaultError> {
        let _pair = self.lock_pair(mailbox.as_str(), client.as_str()).await?;
        // A retry is answered first: a providers file changed since must not refuse it.
        let fields: [&[u8]; 3] = [mailbox.as_str().as_bytes(), client.as_str().as_bytes(), code.expose().as_bytes()];
        let pending = match self.prior(caller, "Bind", request, &fields).await? {
            Prior::Replay(answer) => return Ok(Answer::Replayed(answer)),
            Prior::Run(pending) => pending,
        };
        let provider = self.provider_for_mailbox(&mailbox)?;
        Self::check_format(&provider, "auth_code", &code)?;
        if !mailbox.as_str().is_ascii() {
            // IMAP LOGIN carries no other: refused here, before a probe is spent on it.
            return Err(VaultError::InvalidField {
                field: "mailbox",
                reason: "must be ASCII: a provider's IMAP LOGIN cannot carry other characters".into(),
            });
        }
        // No provider's login has two: refused for new bindings (pairs bound before stay
        // reachable by Get, Rotate and Revoke).
        if mailbox.as_str().matches('@').count() != 1 {
            return Err(VaultError::InvalidField {
                field: "mailbox",
                reason: "must hold exactly one @ (local@domain)".into(),
            });
        }
        if self.find(&mailbox, &client).await?.is_some_and(|r| r.state == CredentialState::Active) {
            return Err(VaultError::AlreadyExists);
        }
        let report = self.probe(&provider, &mailbox, &code).await?;
        let event = self.event(caller, "Bind", (&mailbox, &client), "OK", Some(report.outcome));
        let report = self.require_accepted(event.clone(), report).await?;
        // Only for a code the provider accepted: before, the lookup (its answer or its time)
        // would test guesses for free.
        let report = shared_noted(&provider, report, self.also_held_by(&mailbox, Some(client.as_str()), &code).await);
        // Held until the commit: a key rotation cannot retire the key this code is sealed under
        // before the code is stored.
        let sealing = self.keys.sealing().await;
        let ring = self.keys.load();
        let (key_id, generation, sealed) =
            ring.seal_code(mailbox.as_str(), client.as_str(), 1, code.expose().as_bytes());
        drop(code);
        let answered = report.clone();
        let record = pending
            .map(|p| p.record(&ring, event.at, move |row| proto::bind_response(row, &answered)))
            .transpose()?
            .map(|(record, _)| record);
        let new = NewBinding {
            mailbox,
            client,
            provider: provider.id.clone(),
            code: StoredCode { key_id, generation: Some(generation), sealed },
            now: event.at,
            probe_outcome: ProbeOutcome::Accepted,
        };
        let row = self.store.bind(new, event, record).await?;
        drop(sealing);
        Ok(Answer::Done((row, report)))
    }

    /// Probes the new code and swaps it in (version + 1) only if accepted; then probes the old.
    pub async fn rotate(
        &self,
        caller: &Caller,
        mailbox: Mailbox,
        client: ClientId,
        new_code: AuthCode,
        expected_version: Option<u64>,
        request: Option<RequestId>,
    ) -> Result<Answer<Rotated>, VaultError> {
        let pair = self.lock_pair(mailbox.as_str(), client.as_str()).await?;
        let expected = expected_version.unwrap_or(0).to_be_bytes();
        let fields: [&[u8]; 4] =
            [mailbox.as_str().as_bytes(), client.as_str().as_bytes(), new_code.expose().as_bytes(), &expected];
        let pending = match self.prior(caller, "Rotate", request, &fields).await? {
            Prior::Replay(answer) => return Ok(Answer::Replayed(answer)),
            Prior::Run(pending) => pending,
        };
        let row = self.store.get(mailbox.as_str(), client.as_str()).await?;
        if row.state != CredentialState::Active {
            return Err(VaultError::Revoked);
        }
        if let Some(expected) = expected_version.filter(|v| *v != row.version) {
            return Err(VaultError::Aborted(format!("expected version {expected}, the binding is at {}", row.version)));
        }
        let provider = self.provider_of_row(&row)?;
        Self::check_format(&provider, "new_auth_code", &new_code)?;
        // A tampered old ciphertext must not block replacing it; it just cannot be probed.
        let old_code = self.decrypt(row.clone()).await.ok().map(|(code, _)| code);
        let report = self.probe(&provider, &mailbox, &new_code).await?;
        let event = self.event(caller, "Rotate", (&mailbox, &client), "OK", Some(report.outcome));
        let probe = self.require_accepted(event.clone(), report).await?;
        // As in Bind: only for a code the provider accepted.
        let holder = self.also_held_by(&mailbox, Some(client.as_str()), &new_code).await;
        let probe = shared_noted(&provider, probe, holder);
        let next = row.version + 1;
        let sealing = self.keys.sealing().await;
        let ring = self.keys.load();
        let (key_id, generation, sealed) =
            ring.seal_code(mailbox.as_str(), client.as_str(), next, new_code.expose().as_bytes());
        // The stored code given again is not a previous code: probing it as one would say to
        // delete the code in use. (Compared after the provider accepted it, so that it is no
        // free test of a guess.)
        let old_code = old_code.filter(|old| !old.same_as(&new_code));
        drop(new_code);
        let answered = probe.clone();
        let (record, remembered) = pending
            .map(|p| p.record(&ring, event.at, move |row| proto::rotate_response(row, &answered, None)))
            .transpose()?
            .unzip();
        let change = RotateChange {
            mailbox: event.mailbox.clone(),
            client: event.client.clone(),
            from_version: row.version,
            code: StoredCode { key_id, generation: Some(generation), sealed },
            now: event.at,
        };
        let audited = event.clone();
        let row = self.store.rotate(change, event, record).await?;
        drop(sealing);
        drop(pair);
        let previous_code_probe = self.probe_previous(&provider, &mailbox, old_code, "previous code", &audited).await;
        if let Some(previous) = previous_code_probe.as_ref().filter(|_| remembered.is_some()) {
            let answer = proto::rotate_response(&row, &probe, Some(previous)).encode_to_vec();
            self.complete_answer(remembered, answer).await;
        }
        Ok(Answer::Done(Rotated { row, probe, previous_code_probe }))
    }

    /// Always commits the tombstone first; then probes the destroyed code.
    pub async fn revoke(
        &self,
        caller: &Caller,
        mailbox: Mailbox,
        client: ClientId,
        reason: &str,
        request: Option<RequestId>,
    ) -> Result<Answer<Revoked>, VaultError> {
        let reason = reason.trim();
        if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            return Err(VaultError::InvalidField {
                field: "reason",
                reason: format!("must be at most {MAX_REASON_CHARS} characters without control characters"),
            });
        }
        let pair = self.lock_pair(mailbox.as_str(), client.as_str()).await?;
        let fields: [&[u8]; 3] = [mailbox.as_str().as_bytes(), client.as_str().as_bytes(), reason.as_bytes()];
        let pending = match self.prior(caller, "Revoke", request, &fields).await? {
            Prior::Replay(answer) => return Ok(Answer::Replayed(answer)),
            Prior::Run(pending) => pending,
        };
        let row = self.store.get(mailbox.as_str(), client.as_str()).await?;
        if row.state != CredentialState::Active {
            return Err(VaultError::Revoked);
        }
        let provider = self.provider_of_row(&row).ok();
        let old_code = self.decrypt(row.clone()).await.ok().map(|(code, _)| code);
        // The reason goes into the audit trail, which never holds a code or a token.
        if old_code.as_ref().is_some_and(|c| !crate::redact::echoes(reason, c.expose()).is_empty())
            || crate::auth::holds_token(reason)
        {
            return Err(VaultError::InvalidField {
                field: "reason",
                reason: "must not contain the code being revoked (in any case or spacing, base64-, hex- or percent-encoded) or a token: the reason is kept in the audit trail".into(),
            });
        }
        let event =
            AuditEvent { reason: reason.to_owned(), ..self.event(caller, "Revoke", (&mailbox, &client), "OK", None) };
        let change = RevokeChange {
            mailbox: event.mailbox.clone(),
            client: event.client.clone(),
            reason: reason.to_owned(),
            now: event.at,
        };
        // Held until the commit, so the key the request is fingerprinted under is not retired
        // first (its retry could not be checked).
        let sealing = self.keys.sealing().await;
        let (record, remembered) = pending
            .map(|p| p.record(&self.keys.load(), event.at, |row| proto::revoke_response(row, None)))
            .transpose()?
            .unzip();
        let audited = event.clone();
        let row = self.store.revoke(change, event, record).await?;
        drop(sealing);
        drop(pair);
        let probe = match provider {
            Some(p) => self.probe_previous(&p, &mailbox, old_code, "revoked code", &audited).await,
            None => None,
        };
        if let Some(probe) = probe.as_ref().filter(|_| remembered.is_some()) {
            self.complete_answer(remembered, proto::revoke_response(&row, Some(probe)).encode_to_vec()).await;
        }
        Ok(Answer::Done(Revoked { row, probe }))
    }

    /// Re-probes the stored code and records a verdict (ACCEPTED, REJECTED) on the binding; an
    /// outage is answered and audited only.
    pub async fn verify(
        &self,
        caller: &Caller,
        mailbox: Mailbox,
        client: ClientId,
    ) -> Result<(CredentialRow, ProbeReport), VaultError> {
        let _pair = self.lock_pair(mailbox.as_str(), client.as_str()).await?;
        let row = self.store.get(mailbox.as_str(), client.as_str()).await?;
        let event = self.event(caller, "Verify", (&mailbox, &client), "", None);
        self.verify_row(row, &mailbox, event, 0.0).await
    }

    /// The scheduled sweep's Verify: recorded as one by the `system` caller, only if the binding
    /// is still active and unchecked since `due_before`, and only from the share of the
    /// mailbox's budget that leaves admins their reserve. `None` if it was no longer due.
    pub async fn verify_due(
        &self,
        mailbox: Mailbox,
        client: ClientId,
        due_before: Millis,
    ) -> Result<Option<ProbeReport>, VaultError> {
        let _pair = self.lock_pair(mailbox.as_str(), client.as_str()).await?;
        let row = self.store.get(mailbox.as_str(), client.as_str()).await?;
        if row.state != CredentialState::Active || row.last_verified_at.unwrap_or(row.created_at) >= due_before {
            return Ok(None);
        }
        let mut event = self.event(&Caller::system(), "Verify", (&mailbox, &client), "", None);
        event.caller_role = "system".into();
        let keep = self.budget.sweep_reserve();
        Ok(Some(self.verify_row(row, &mailbox, event, keep).await?.1))
    }

    /// Probes `row`'s code (leaving `keep` probes in the budget) and audits the outcome with
    /// `event`; the caller holds the pair's lock. Only a verdict (ACCEPTED, REJECTED) is recorded
    /// on the binding: an outage checked nothing, so it neither clears a REJECTED code nor counts
    /// as a check (someone who can cut the vault off from the provider could otherwise hide dead
    /// codes from the review and the alert).
    async fn verify_row(
        &self,
        row: Arc<CredentialRow>,
        mailbox: &Mailbox,
        event: AuditEvent,
        keep: f64,
    ) -> Result<(CredentialRow, ProbeReport), VaultError> {
        let (code, row) = self.decrypt(row).await?;
        let provider = self.provider_of_row(&row)?;
        let mut report = self.probe_leaving(&provider, mailbox, &code, keep).await?;
        drop(code);
        // A stored code that worked before and is refused now, by IMAP LOGIN or SMTP AUTH: say
        // what most likely happened (a more specific hint, such as NetEase's "Unsafe Login", stays).
        if report.outcome == ProbeOutcome::Rejected
            && (report.hint == provider.hint(ProbeOutcome::Rejected) || report.hint == provider.smtp_rejected_hint())
        {
            report.hint = provider.stored_code_rejected_hint();
        }
        let outcome = report.outcome;
        let event = AuditEvent { outcome: outcome.as_str().to_owned(), probe_outcome: Some(outcome), ..event };
        if !outcome.is_verdict() {
            self.store.audit(event).await?;
            return Ok(((*row).clone(), report));
        }
        let record = ProbeRecord {
            mailbox: event.mailbox.clone(),
            client: event.client.clone(),
            version: row.version,
            outcome,
            now: event.at,
        };
        let row = self.store.record_probe(record, event).await?;
        Ok((row, report))
    }
}

/// `report`, of a code the provider accepted, its hint saying so when another client of the
/// mailbox holds the same code (one code per client, so that each can be revoked alone).
fn shared_noted(provider: &Provider, mut report: ProbeReport, holder: Holder) -> ProbeReport {
    match holder {
        Holder::Other(client) => report.hint = provider.shared_new_code_hint(&client),
        Holder::Nobody => {}
        Holder::Unknown => {
            report.hint = format!("{} ({SHARING_UNCHECKED}: give each client a code of its own.)", report.hint);
        }
    }
    report
}

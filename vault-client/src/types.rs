//! What the vault answers, as plain Rust: times are `SystemTime`, durations `Duration`, enums
//! typed, absent reports `None`. Built from the wire messages in [`crate::proto`], which stay
//! available through [`crate::VaultClient::raw`]. A time this platform cannot hold is `None`,
//! and an enum value newer than this crate reads as `Unspecified`: use `raw()` for the exact
//! wire values.

use std::time::{Duration, SystemTime};

use crate::Error;
use crate::proto::{self, CredentialState, ProbeOutcome};

/// A binding's metadata; never its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Canonical mailbox (`alice@sina.com`).
    pub mailbox: String,
    /// Canonical client id (`sender`).
    pub client: String,
    /// The provider id from the registry (`sina`).
    pub provider: String,
    /// Active, or revoked (a tombstone).
    pub state: CredentialState,
    /// 1 at Bind, + 1 per Rotate.
    pub version: u64,
    /// When the pair was bound.
    pub created_at: Option<SystemTime>,
    /// The last Rotate.
    pub rotated_at: Option<SystemTime>,
    /// When it was revoked.
    pub revoked_at: Option<SystemTime>,
    /// Why it was revoked (empty if no reason was given).
    pub revoke_reason: String,
    /// The last Reveal recorded.
    pub last_used_at: Option<SystemTime>,
    /// When a probe last reached a verdict on the code (Bind, Rotate, Verify, the sweep; an
    /// outage does not count).
    pub last_verified_at: Option<SystemTime>,
    /// That verdict (`Unspecified`: none recorded, as for a binding moved in without one).
    pub last_probe_outcome: ProbeOutcome,
}

/// What a login probe at the provider found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Accepted, rejected, or why no answer came.
    pub outcome: ProbeOutcome,
    /// The server probed (`imap.sina.com:993`).
    pub server: String,
    /// What it answered, sanitised (`OK Logged in`, `NO [AUTHENTICATIONFAILED] ...`).
    pub server_response: String,
    /// What to do about it.
    pub hint: String,
    /// How long the probe took.
    pub latency: Duration,
}

/// A Bind's answer: the new binding and the probe that let it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The binding, at version 1.
    pub credential: Credential,
    /// The probe of the new code (accepted).
    pub probe: ProbeReport,
}

/// A Rotate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The binding at its new version.
    pub credential: Credential,
    /// The probe of the new code (accepted).
    pub probe: ProbeReport,
    /// Whether the provider still accepts the replaced code (`None`: not probed: the budget was
    /// spent, or the new code is the old one). Accepted means: delete it in webmail, unless the
    /// hint says another client of the mailbox holds it.
    pub previous_code_probe: Option<ProbeReport>,
}

/// A Revoke's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The tombstone.
    pub credential: Credential,
    /// Whether the provider still accepts the destroyed code (`None`: not probed).
    pub probe: Option<ProbeReport>,
}

/// A Verify's answer: the stored code probed again, whatever the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The binding, with a verdict (ACCEPTED, REJECTED) recorded; as it was after an outage.
    pub credential: Credential,
    /// The probe.
    pub probe: ProbeReport,
}

/// A client that no longer uses its code (the quarterly review).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusedClient {
    /// Canonical mailbox.
    pub mailbox: String,
    /// Canonical client id.
    pub client: String,
    /// The last Reveal (`None`: never used).
    pub last_used_at: Option<SystemTime>,
    /// When the pair was bound.
    pub created_at: Option<SystemTime>,
    /// The last probe's outcome.
    pub last_probe_outcome: ProbeOutcome,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its id.
    pub id: u64,
    /// When it happened (for aggregated Reveals, the last of them).
    pub at: Option<SystemTime>,
    /// The caller's token id (`tk_...`), or `system`.
    pub caller: String,
    /// `admin`, `client:<id>` or `system`.
    pub caller_role: String,
    /// Bind, Rotate, Revoke, Verify, Reveal or RotateDataKey.
    pub rpc: String,
    /// Canonical mailbox.
    pub mailbox: String,
    /// Canonical client id.
    pub client: String,
    /// `OK`, `PROBE_<OUTCOME>`, `OLD_CODE_PROBED`, ...
    pub outcome: String,
    /// The probe's outcome, if the call probed.
    pub probe_outcome: Option<ProbeOutcome>,
    /// How many calls it stands for (Reveals are aggregated).
    pub count: u64,
    /// The first of those calls.
    pub first_at: Option<SystemTime>,
    /// A Revoke's reason; empty for other events.
    pub reason: String,
}

/// A RotateDataKey's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyRotated {
    /// The key every code is now sealed under.
    pub active_key_id: u32,
    /// When that key was made.
    pub active_key_created_at: Option<SystemTime>,
    /// The keys deleted.
    pub retired_key_ids: Vec<u32>,
    /// Codes re-sealed.
    pub codes_resealed: u64,
    /// Tokens re-MAC'd.
    pub tokens_rekeyed: u64,
    /// Rows that did not open (tampered or corrupt), moved unchanged.
    pub unreadable_codes: u64,
}

/// One page of a listing. Pass `next_page_token` back for the next page; it is empty after the
/// last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// This page's entries.
    pub items: Vec<T>,
    /// Where the next page starts; empty when there is none.
    pub next_page_token: String,
}

fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

fn missing(what: &str) -> Error {
    Error::Other { code: crate::Code::Internal, message: format!("the vault's answer has no {what}") }
}

impl From<proto::Credential> for Credential {
    fn from(c: proto::Credential) -> Self {
        Self {
            state: c.state(),
            last_probe_outcome: c.last_probe_outcome(),
            mailbox: c.mailbox,
            client: c.client,
            provider: c.provider,
            version: c.version,
            created_at: time(c.created_at),
            rotated_at: time(c.rotated_at),
            revoked_at: time(c.revoked_at),
            revoke_reason: c.revoke_reason,
            last_used_at: time(c.last_used_at),
            last_verified_at: time(c.last_verified_at),
        }
    }
}

impl From<proto::ProbeReport> for ProbeReport {
    fn from(p: proto::ProbeReport) -> Self {
        Self {
            outcome: p.outcome(),
            latency: p.latency.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default(),
            server: p.server,
            server_response: p.server_response,
            hint: p.hint,
        }
    }
}

fn credential(c: Option<proto::Credential>) -> Result<Credential, Error> {
    c.map(Credential::from).ok_or_else(|| missing("credential"))
}

fn probe(p: Option<proto::ProbeReport>) -> Result<ProbeReport, Error> {
    p.map(ProbeReport::from).ok_or_else(|| missing("probe report"))
}

impl TryFrom<proto::BindResponse> for Bound {
    type Error = Error;
    fn try_from(r: proto::BindResponse) -> Result<Self, Error> {
        Ok(Self { credential: credential(r.credential)?, probe: probe(r.probe)? })
    }
}

impl TryFrom<proto::RotateResponse> for Rotated {
    type Error = Error;
    fn try_from(r: proto::RotateResponse) -> Result<Self, Error> {
        Ok(Self {
            credential: credential(r.credential)?,
            probe: probe(r.probe)?,
            previous_code_probe: r.previous_code_probe.map(ProbeReport::from),
        })
    }
}

impl TryFrom<proto::RevokeResponse> for Revoked {
    type Error = Error;
    fn try_from(r: proto::RevokeResponse) -> Result<Self, Error> {
        Ok(Self { credential: credential(r.credential)?, probe: r.probe.map(ProbeReport::from) })
    }
}

impl TryFrom<proto::VerifyResponse> for Verified {
    type Error = Error;
    fn try_from(r: proto::VerifyResponse) -> Result<Self, Error> {
        Ok(Self { credential: credential(r.credential)?, probe: probe(r.probe)? })
    }
}

impl From<proto::UnusedClient> for UnusedClient {
    fn from(u: proto::UnusedClient) -> Self {
        Self {
            last_probe_outcome: u.last_probe_outcome(),
            mailbox: u.mailbox,
            client: u.client,
            last_used_at: time(u.last_used_at),
            created_at: time(u.created_at),
        }
    }
}

impl From<proto::AuditEvent> for AuditEvent {
    fn from(e: proto::AuditEvent) -> Self {
        let probe_outcome = Some(e.probe_outcome()).filter(|o| *o != ProbeOutcome::Unspecified);
        Self {
            id: e.id,
            at: time(e.at),
            caller: e.caller,
            caller_role: e.caller_role,
            rpc: e.rpc,
            mailbox: e.mailbox,
            client: e.client,
            outcome: e.outcome,
            probe_outcome,
            count: e.count,
            first_at: time(e.first_at),
            reason: e.reason,
        }
    }
}

impl From<proto::RotateDataKeyResponse> for DataKeyRotated {
    fn from(r: proto::RotateDataKeyResponse) -> Self {
        Self {
            active_key_id: r.active_key_id,
            active_key_created_at: time(r.active_key_created_at),
            retired_key_ids: r.retired_key_ids,
            codes_resealed: r.codes_resealed,
            tokens_rekeyed: r.tokens_rekeyed,
            unreadable_codes: r.unreadable_codes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_messages_become_plain_values() {
        let wire = proto::AuditEvent {
            id: 7,
            at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 }),
            rpc: "Revoke".into(),
            probe_outcome: ProbeOutcome::Accepted.into(),
            ..Default::default()
        };
        let event = AuditEvent::from(wire);
        assert_eq!(event.at, Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_005)));
        assert_eq!(event.probe_outcome, Some(ProbeOutcome::Accepted));
        assert_eq!(AuditEvent::from(proto::AuditEvent::default()).probe_outcome, None);

        let bind = proto::BindResponse { credential: Some(proto::Credential::default()), probe: None };
        assert!(matches!(Bound::try_from(bind), Err(Error::Other { .. })), "a missing report is an error");
    }
}

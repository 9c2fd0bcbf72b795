//! The `vault.v1` contract (the `vault-proto` crate) and the conversions from domain types.

#![allow(clippy::pedantic, missing_docs)]

use prost_types::Timestamp;

use crate::outcome::ProbeOutcome as DomainOutcome;
use crate::probe::ProbeReport as DomainReport;
use crate::store::{AuditRecord, CredentialRow, CredentialState as DomainState};

pub use vault_proto::*;

/// Unix milliseconds to a protobuf timestamp.
pub fn timestamp(millis: i64) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

impl From<DomainOutcome> for ProbeOutcome {
    fn from(o: DomainOutcome) -> Self {
        match o {
            DomainOutcome::Accepted => Self::Accepted,
            DomainOutcome::Rejected => Self::Rejected,
            DomainOutcome::Unreachable => Self::Unreachable,
            DomainOutcome::TlsFailed => Self::TlsFailed,
            DomainOutcome::TimedOut => Self::TimedOut,
            DomainOutcome::ProtocolError => Self::ProtocolError,
        }
    }
}

/// The domain outcome a proto one names; `None` for UNSPECIFIED.
pub fn domain_outcome(o: ProbeOutcome) -> Option<DomainOutcome> {
    match o {
        ProbeOutcome::Unspecified => None,
        ProbeOutcome::Accepted => Some(DomainOutcome::Accepted),
        ProbeOutcome::Rejected => Some(DomainOutcome::Rejected),
        ProbeOutcome::Unreachable => Some(DomainOutcome::Unreachable),
        ProbeOutcome::TlsFailed => Some(DomainOutcome::TlsFailed),
        ProbeOutcome::TimedOut => Some(DomainOutcome::TimedOut),
        ProbeOutcome::ProtocolError => Some(DomainOutcome::ProtocolError),
    }
}

impl From<DomainReport> for ProbeReport {
    fn from(r: DomainReport) -> Self {
        Self {
            outcome: ProbeOutcome::from(r.outcome).into(),
            server: r.server,
            server_response: r.server_response,
            hint: r.hint,
            latency: prost_types::Duration::try_from(r.latency).ok(),
        }
    }
}

impl From<CredentialRow> for Credential {
    fn from(r: CredentialRow) -> Self {
        Self {
            mailbox: r.mailbox,
            client: r.client,
            provider: r.provider,
            state: match r.state {
                DomainState::Active => CredentialState::Active,
                DomainState::Revoked => CredentialState::Revoked,
            }
            .into(),
            version: r.version,
            created_at: Some(timestamp(r.created_at)),
            rotated_at: r.rotated_at.map(timestamp),
            revoked_at: r.revoked_at.map(timestamp),
            revoke_reason: r.revoke_reason.unwrap_or_default(),
            last_used_at: r.last_used_at.map(timestamp),
            last_verified_at: r.last_verified_at.map(timestamp),
            last_probe_outcome: r.last_probe_outcome.map_or(ProbeOutcome::Unspecified, ProbeOutcome::from).into(),
        }
    }
}

/// The answer to a Bind (also remembered for a retry with the same request id).
pub fn bind_response(row: &CredentialRow, probe: &DomainReport) -> BindResponse {
    BindResponse { credential: Some(row.clone().into()), probe: Some(probe.clone().into()) }
}

/// The answer to a Rotate.
pub fn rotate_response(row: &CredentialRow, probe: &DomainReport, previous: Option<&DomainReport>) -> RotateResponse {
    RotateResponse {
        credential: Some(row.clone().into()),
        probe: Some(probe.clone().into()),
        previous_code_probe: previous.cloned().map(Into::into),
    }
}

/// The answer to a Revoke.
pub fn revoke_response(row: &CredentialRow, probe: Option<&DomainReport>) -> RevokeResponse {
    RevokeResponse { credential: Some(row.clone().into()), probe: probe.cloned().map(Into::into) }
}

impl From<AuditRecord> for AuditEvent {
    fn from(r: AuditRecord) -> Self {
        let e = r.event;
        Self {
            id: u64::try_from(r.id).unwrap_or(0),
            at: Some(timestamp(e.at)),
            caller: e.caller,
            caller_role: e.caller_role,
            rpc: e.rpc,
            mailbox: e.mailbox,
            client: e.client,
            outcome: e.outcome,
            probe_outcome: e.probe_outcome.map_or(ProbeOutcome::Unspecified, ProbeOutcome::from).into(),
            count: e.count,
            first_at: Some(timestamp(e.first_at)),
            reason: e.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_millis() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
    }
}

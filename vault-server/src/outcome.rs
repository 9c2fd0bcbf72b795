//! What a login probe found: a leaf type shared by the probe, the providers' hints, the store
//! and the API. [`ProbeFailure`](crate::outcome::ProbeFailure) is every outcome but ACCEPTED, so a failure can never claim
//! success.

/// What a login probe found. Numbering matches `vault.v1.ProbeOutcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    Accepted = 1,
    Rejected = 2,
    Unreachable = 3,
    TlsFailed = 4,
    TimedOut = 5,
    ProtocolError = 6,
}

impl ProbeOutcome {
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            1 => Self::Accepted,
            2 => Self::Rejected,
            3 => Self::Unreachable,
            4 => Self::TlsFailed,
            5 => Self::TimedOut,
            6 => Self::ProtocolError,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "ACCEPTED",
            Self::Rejected => "REJECTED",
            Self::Unreachable => "UNREACHABLE",
            Self::TlsFailed => "TLS_FAILED",
            Self::TimedOut => "TIMED_OUT",
            Self::ProtocolError => "PROTOCOL_ERROR",
        }
    }
}

/// A probe outcome other than ACCEPTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFailure {
    Rejected,
    Unreachable,
    TlsFailed,
    TimedOut,
    ProtocolError,
}

impl ProbeOutcome {
    /// ACCEPTED or REJECTED: the provider judged the code. The others are outages that checked
    /// nothing.
    pub fn is_verdict(self) -> bool {
        matches!(self, Self::Accepted | Self::Rejected)
    }

    /// `None` for ACCEPTED, else the failure.
    pub fn failure(self) -> Option<ProbeFailure> {
        match self {
            Self::Accepted => None,
            Self::Rejected => Some(ProbeFailure::Rejected),
            Self::Unreachable => Some(ProbeFailure::Unreachable),
            Self::TlsFailed => Some(ProbeFailure::TlsFailed),
            Self::TimedOut => Some(ProbeFailure::TimedOut),
            Self::ProtocolError => Some(ProbeFailure::ProtocolError),
        }
    }
}

impl ProbeFailure {
    pub fn outcome(self) -> ProbeOutcome {
        match self {
            Self::Rejected => ProbeOutcome::Rejected,
            Self::Unreachable => ProbeOutcome::Unreachable,
            Self::TlsFailed => ProbeOutcome::TlsFailed,
            Self::TimedOut => ProbeOutcome::TimedOut,
            Self::ProtocolError => ProbeOutcome::ProtocolError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_only_accepted_is_not_a_failure() {
        for v in 1..=6 {
            let o = ProbeOutcome::from_i32(v).unwrap_or_else(|| panic!("{v}"));
            assert_eq!(o as i32, v);
            match o.failure() {
                None => assert_eq!(o, ProbeOutcome::Accepted),
                Some(f) => assert_eq!(f.outcome(), o),
            }
        }
        assert!(ProbeOutcome::from_i32(0).is_none() && ProbeOutcome::from_i32(7).is_none());
    }
}

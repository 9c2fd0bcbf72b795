//! Probe outcomes and reports, and sanitising of server replies.

use std::time::Duration;

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

/// The result of one probe, safe to send to a client and to log.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub outcome: ProbeOutcome,
    /// `host:port` as named in the registry.
    pub server: String,
    pub server_response: String,
    pub hint: String,
    pub latency: Duration,
}

/// Longest server reply kept in a report.
const MAX_RESPONSE_CHARS: usize = 200;

/// Makes server text safe to show: no control characters, bounded length, and the secret
/// replaced if a server ever echoes it.
pub fn sanitize(text: &str, secret: &str) -> String {
    let text = if secret.is_empty() { text.to_owned() } else { text.replace(secret, "[redacted]") };
    let cleaned: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let trimmed = cleaned.trim();
    if trimmed.chars().count() > MAX_RESPONSE_CHARS {
        let mut s: String = trimmed.chars().take(MAX_RESPONSE_CHARS).collect();
        s.push('…');
        s
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_controls_secret_and_length() {
        assert_eq!(sanitize("NO bad\r\n", "x"), "NO bad");
        assert_eq!(sanitize("echo s3cr3t!", "s3cr3t"), "echo [redacted]!");
        assert_eq!(sanitize(&"a".repeat(500), "").chars().count(), MAX_RESPONSE_CHARS + 1);
    }

    #[test]
    fn outcome_numbers_round_trip() {
        for v in 1..=6 {
            assert_eq!(ProbeOutcome::from_i32(v).map(|o| o as i32), Some(v));
        }
        assert!(ProbeOutcome::from_i32(0).is_none());
    }
}

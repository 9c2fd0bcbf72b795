//! Probe reports, the failed-probe type, and sanitising of server replies.

use std::time::Duration;

use crate::outcome::{ProbeFailure, ProbeOutcome};

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

impl ProbeReport {
    /// The report if the provider accepted the code, else the failure it stands for.
    pub fn accepted(self) -> Result<Self, FailedProbe> {
        match self.outcome.failure() {
            None => Ok(self),
            Some(failure) => Err(FailedProbe { failure, report: self }),
        }
    }
}

/// A probe that did not accept the code. It cannot hold ACCEPTED: the only way to make one is
/// [`ProbeReport::accepted`].
#[derive(Debug, Clone)]
pub struct FailedProbe {
    failure: ProbeFailure,
    report: ProbeReport,
}

impl FailedProbe {
    pub fn failure(&self) -> ProbeFailure {
        self.failure
    }

    pub fn report(&self) -> &ProbeReport {
        &self.report
    }

    pub fn into_report(self) -> ProbeReport {
        self.report
    }
}

/// Longest server reply kept in a report.
const MAX_RESPONSE_CHARS: usize = 200;

/// Makes server text safe to show: no control characters, bounded length, and the secret
/// replaced if a server ever echoes it, as sent or as the escaped IMAP string it went out as.
pub fn sanitize(text: &str, secret: &str) -> String {
    let mut text = text.to_owned();
    if !secret.is_empty() {
        let escaped = secret.replace('\\', "\\\\").replace('"', "\\\"");
        text = text.replace(&escaped, "[redacted]").replace(secret, "[redacted]");
    }
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
        assert_eq!(sanitize(r#"BAD "a\"b\\c" unknown"#, r#"a"b\c"#), "BAD \"[redacted]\" unknown");
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

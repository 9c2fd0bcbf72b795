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
/// replaced wherever a server echoes it (see `redact::echoes` for how).
pub fn sanitize(text: &str, secret: &str) -> String {
    let cleaned: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let redacted = crate::redact::redact(&cleaned, secret);
    let trimmed = redacted.trim();
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
    fn sanitize_finds_the_code_in_another_case_or_split_by_a_control_character() {
        for reply in
            ["NO bad password sinacode12345678", "NO bad password SinaCode\u{1}12345678", "BAD SINACODE1234567..."]
        {
            let shown = sanitize(reply, "SinaCode12345678");
            assert!(!shown.contains("1234567"), "{reply:?} shown as {shown:?}");
            assert!(shown.contains("[redacted]"), "{shown:?}");
        }
    }

    #[test]
    fn outcome_numbers_round_trip() {
        for v in 1..=6 {
            assert_eq!(ProbeOutcome::from_i32(v).map(|o| o as i32), Some(v));
        }
        assert!(ProbeOutcome::from_i32(0).is_none());
    }
}

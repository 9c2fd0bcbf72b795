//! The one mapping from domain errors (`VaultError`, `AuthError`) to a gRPC `Status`. Every
//! variant is matched; messages are safe for clients (never a code or token), and the cause is
//! logged here.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::outcome::ProbeFailure;
use crate::probe::FailedProbe;
use crate::store::StoreError;
use crate::vault::VaultError;

/// How long a client should wait before retrying a call whose probe found no server.
const PROBE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// How long to wait before resuming a data-key rotation that stopped.
const ROTATION_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// ErrorInfo domain for this service's reasons.
pub const ERROR_DOMAIN: &str = "authcode-vault";

fn error_info(code: Code, message: String, reason: &str, meta: Vec<(&str, String)>) -> Status {
    let meta: std::collections::HashMap<String, String> = meta.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, ERROR_DOMAIN, meta))
}

fn bad_request(field: &str, description: String) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

impl From<VaultError> for Status {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::InvalidId(id) => bad_request(id.field, id.reason.to_owned()),
            VaultError::InvalidField { field, reason } => bad_request(field, reason),
            VaultError::BadCodeFormat { field, hint, .. } => bad_request(field, hint),
            VaultError::UnknownProvider { domain } => bad_request(
                "mailbox",
                format!("no provider is configured for the domain {domain}; add it to the --providers file"),
            ),
            VaultError::NotFound => Status::not_found("no such binding"),
            VaultError::AlreadyExists => Status::already_exists(
                "the pair already has an active code; use Rotate to replace it or Revoke it first",
            ),
            VaultError::Revoked => error_info(
                Code::FailedPrecondition,
                "the binding is revoked; Bind a new code to use it again".into(),
                "REVOKED",
                vec![],
            ),
            VaultError::ProbeFailed(failed) => probe_failed(failed),
            VaultError::Aborted(why) => Status::aborted(format!("{why}; nothing was changed")),
            VaultError::RateLimited { retry_after } => {
                tracing::info!(retry_after_secs = retry_after.as_secs(), "probe budget exhausted");
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.set_error_info("PROBE_BUDGET_EXHAUSTED", ERROR_DOMAIN, std::collections::HashMap::new());
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "the probe budget for this mailbox is spent (protecting it from a provider block); retry in {} s",
                        retry_after.as_secs()
                    ),
                    details,
                )
            }
            VaultError::DataLoss => {
                tracing::error!("a stored ciphertext failed authentication (tampering or corruption)");
                Status::data_loss("the stored code failed authentication; the row was altered or corrupted")
            }
            VaultError::RequestUnverifiable => error_info(
                Code::FailedPrecondition,
                "this request_id was used before a data-key rotation, so whether this is the same request cannot be checked; nothing was changed. Read the binding (GetCredential) to see whether the first call took effect".into(),
                "REQUEST_ID_UNVERIFIABLE",
                vec![],
            ),
            VaultError::RequestDamaged => {
                tracing::error!("a remembered request failed authentication (tampering or corruption)");
                error_info(
                    Code::DataLoss,
                    "the answer remembered for this request_id failed authentication (the row was altered); nothing was changed. Read the binding (GetCredential)".into(),
                    "REQUEST_RECORD_DAMAGED",
                    vec![],
                )
            }
            VaultError::Store(err) => storage(&err),
            VaultError::PassphraseChanged => error_info(
                Code::FailedPrecondition,
                "the passphrase was changed after this server started, so it cannot wrap a new data key; restart it with the new passphrase, then rotate".into(),
                "PASSPHRASE_CHANGED",
                vec![],
            ),
            VaultError::RotationStopped(why) => {
                tracing::error!(error = %why, "data-key rotation stopped");
                let mut details = ErrorDetails::with_retry_info(Some(ROTATION_RETRY_AFTER));
                details.set_error_info("ROTATION_STOPPED", ERROR_DOMAIN, std::collections::HashMap::new());
                Status::with_error_details(
                    Code::Unavailable,
                    "the data-key rotation stopped before the old key was deleted (see the server log); every code stays readable. Call RotateDataKey again to resume it",
                    details,
                )
            }
            VaultError::RotationShared => error_info(
                Code::FailedPrecondition,
                "data-key rotation is not available while replicas share a PostgreSQL database: the other replicas would not know the new key; nothing was changed".into(),
                "ROTATION_NOT_SHARED",
                vec![],
            ),
            VaultError::Internal(msg) => {
                tracing::error!(error = %msg, "internal error");
                Status::internal("internal error; see the server log")
            }
            e @ VaultError::ProviderGone(_) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error; see the server log")
            }
        }
    }
}

/// A probe that did not accept the code: its outcome, the server's words and the hint.
fn probe_failed(failed: FailedProbe) -> Status {
    let failed_kind = failed.failure();
    let (code, reason) = match failed_kind {
        ProbeFailure::Rejected => (Code::FailedPrecondition, "PROBE_REJECTED"),
        ProbeFailure::Unreachable => (Code::Unavailable, "PROBE_UNREACHABLE"),
        ProbeFailure::TimedOut => (Code::Unavailable, "PROBE_TIMED_OUT"),
        ProbeFailure::TlsFailed => (Code::Unavailable, "PROBE_TLS_FAILED"),
        ProbeFailure::ProtocolError => (Code::Unavailable, "PROBE_PROTOCOL_ERROR"),
    };
    let report = failed.into_report();
    tracing::info!(outcome = report.outcome.as_str(), server = %report.server, "probe did not accept the code");
    // Said of the server as far as the probe got with it (a server that greeted, then closed
    // or hung, did answer: not "no server answered").
    let (server, outcome) = (&report.server, report.outcome.as_str());
    let what = match failed_kind {
        ProbeFailure::Rejected | ProbeFailure::ProtocolError => format!("{server} answered {outcome}"),
        ProbeFailure::Unreachable => format!("could not reach {server}, or it closed the connection ({outcome})"),
        ProbeFailure::TimedOut => format!("{server} did not answer in time ({outcome})"),
        ProbeFailure::TlsFailed => format!("the TLS handshake with {server} failed ({outcome})"),
    };
    let message = format!("{what}: {} — {}", report.server_response, report.hint);
    let meta: std::collections::HashMap<String, String> = [
        ("outcome", report.outcome.as_str().to_owned()),
        ("server", report.server),
        ("server_response", report.server_response),
        ("hint", report.hint),
        ("latency_ms", report.latency.as_millis().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, meta);
    if code == Code::Unavailable {
        // Retryable: nothing was changed. A provider that is down is not hammered.
        details.set_retry_info(Some(PROBE_RETRY_AFTER));
    }
    Status::with_error_details(code, message, details)
}

/// A storage failure the domain did not turn into one of its own errors.
fn storage(err: &StoreError) -> Status {
    tracing::error!(error = %err, "storage failure");
    match err {
        StoreError::Full => error_info(
            Code::ResourceExhausted,
            "the vault's disk is full; nothing was changed. Free space on it and retry".into(),
            "STORAGE_FULL",
            vec![],
        ),
        StoreError::Unavailable(_) => error_info(
            Code::Unavailable,
            "the vault cannot use its database (a data dir: read-only, missing or failing disk; PostgreSQL: \
             unreachable or refusing writes); nothing was changed"
                .into(),
            "STORAGE_UNAVAILABLE",
            vec![],
        ),
        StoreError::OutcomeUnknown(_) => error_info(
            Code::Unavailable,
            "the vault lost its database connection while committing: the change may have been made. Get the \
             binding to see, or send a Bind, Rotate or Revoke again with the same request_id (a change made is \
             answered again, not made twice)"
                .into(),
            "STORAGE_OUTCOME_UNKNOWN",
            vec![],
        ),
        StoreError::NotFound
        | StoreError::AlreadyExists
        | StoreError::Conflict
        | StoreError::RequestIdTaken
        | StoreError::Revoked
        | StoreError::NotInitialised
        | StoreError::Corrupt(_)
        | StoreError::Backend(_) => Status::internal("storage failure; see the server log"),
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        let reason = e.reason();
        match e {
            AuthError::MissingToken | AuthError::MalformedToken | AuthError::InvalidToken => {
                error_info(Code::Unauthenticated, e.to_string(), reason, vec![])
            }
            AuthError::Throttled { retry_after } => {
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.set_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "too many failed authentications from this address; retry in {} ms",
                        retry_after.as_millis()
                    ),
                    details,
                )
            }
            AuthError::TokensUnavailable => {
                tracing::error!("the token table could not be read for too long; refusing every token");
                error_info(
                    Code::Unavailable,
                    "the server cannot read its token table, so it vouches for no token; retry later".into(),
                    reason,
                    vec![],
                )
            }
            AuthError::AdminRequired { .. } | AuthError::ClientTokenRequired { .. } | AuthError::WrongClient { .. } => {
                error_info(Code::PermissionDenied, e.to_string(), reason, vec![])
            }
        }
    }
}

/// Health and reflection are open without a token; they share a small budget, and a call over it
/// is refused at once.
pub fn public_budget_exhausted() -> Status {
    error_info(
        Code::ResourceExhausted,
        "too many health and reflection calls in flight; retry shortly".into(),
        "PUBLIC_BUDGET_EXHAUSTED",
        vec![],
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::probe::ProbeReport;

    fn reason(s: &Status) -> String {
        s.get_details_error_info().map(|i| i.reason).unwrap_or_default()
    }

    fn failed(outcome: crate::outcome::ProbeOutcome) -> VaultError {
        let report = ProbeReport {
            outcome,
            server: "imap.sina.com:993".into(),
            server_response: "NO [AUTHENTICATIONFAILED]".into(),
            hint: "use the client auth code".into(),
            latency: Duration::from_millis(12),
        };
        VaultError::ProbeFailed(report.accepted().unwrap_err())
    }

    #[test]
    fn every_domain_error_has_its_code_and_reason() {
        use crate::outcome::ProbeOutcome as O;
        let cases: Vec<(VaultError, Code, &str)> = vec![
            (VaultError::InvalidField { field: "page_size", reason: "too big".into() }, Code::InvalidArgument, ""),
            (
                VaultError::BadCodeFormat { field: "auth_code", provider: "Sina".into(), hint: "16 letters".into() },
                Code::InvalidArgument,
                "",
            ),
            (VaultError::UnknownProvider { domain: "example.org".into() }, Code::InvalidArgument, ""),
            (VaultError::NotFound, Code::NotFound, ""),
            (VaultError::AlreadyExists, Code::AlreadyExists, ""),
            (VaultError::Revoked, Code::FailedPrecondition, "REVOKED"),
            (failed(O::Rejected), Code::FailedPrecondition, "PROBE_REJECTED"),
            (failed(O::Unreachable), Code::Unavailable, "PROBE_UNREACHABLE"),
            (failed(O::TimedOut), Code::Unavailable, "PROBE_TIMED_OUT"),
            (failed(O::TlsFailed), Code::Unavailable, "PROBE_TLS_FAILED"),
            (failed(O::ProtocolError), Code::Unavailable, "PROBE_PROTOCOL_ERROR"),
            (VaultError::Aborted("expected 1".into()), Code::Aborted, ""),
            (
                VaultError::RateLimited { retry_after: Duration::from_secs(360) },
                Code::ResourceExhausted,
                "PROBE_BUDGET_EXHAUSTED",
            ),
            (VaultError::DataLoss, Code::DataLoss, ""),
            (VaultError::RequestUnverifiable, Code::FailedPrecondition, "REQUEST_ID_UNVERIFIABLE"),
            (VaultError::RequestDamaged, Code::DataLoss, "REQUEST_RECORD_DAMAGED"),
            (VaultError::Store(StoreError::Corrupt("x".into())), Code::Internal, ""),
            (VaultError::Store(StoreError::Full), Code::ResourceExhausted, "STORAGE_FULL"),
            (VaultError::Store(StoreError::Unavailable("read-only".into())), Code::Unavailable, "STORAGE_UNAVAILABLE"),
            (VaultError::RotationShared, Code::FailedPrecondition, "ROTATION_NOT_SHARED"),
            (VaultError::Internal("x".into()), Code::Internal, ""),
        ];
        for (error, code, want_reason) in cases {
            let shown = format!("{error:?}");
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{shown}");
            assert_eq!(reason(&status), want_reason, "{shown}");
        }
        let limited = Status::from(VaultError::RateLimited { retry_after: Duration::from_secs(360) });
        assert_eq!(limited.get_details_retry_info().and_then(|r| r.retry_delay), Some(Duration::from_secs(360)));
        let unreachable = Status::from(failed(O::Unreachable));
        assert!(
            unreachable.message().starts_with("could not reach imap.sina.com:993, or it closed the connection"),
            "{}",
            unreachable.message()
        );
        assert_eq!(unreachable.get_details_retry_info().and_then(|r| r.retry_delay), Some(PROBE_RETRY_AFTER));
        let rejected = Status::from(failed(O::Rejected));
        assert!(rejected.get_details_retry_info().is_none(), "a refused code is not retryable");
        assert!(
            rejected.message().contains("answered REJECTED: NO [AUTHENTICATIONFAILED] — use"),
            "{}",
            rejected.message()
        );
        let info = rejected.get_details_error_info().unwrap();
        assert_eq!(info.metadata["server_response"], "NO [AUTHENTICATIONFAILED]");
        assert_eq!(info.metadata["hint"], "use the client auth code");
        let store = Status::from(VaultError::Store(StoreError::Corrupt("table tokens: secret detail".into())));
        assert!(!store.message().contains("secret detail"), "internal causes stay in the log");
    }

    #[test]
    fn every_auth_error_has_its_code_and_reason() {
        let cases = [
            (AuthError::MissingToken, Code::Unauthenticated),
            (AuthError::MalformedToken, Code::Unauthenticated),
            (AuthError::InvalidToken, Code::Unauthenticated),
            (AuthError::Throttled { retry_after: Duration::from_millis(500) }, Code::ResourceExhausted),
            (AuthError::TokensUnavailable, Code::Unavailable),
            (AuthError::AdminRequired { rpc: "Bind" }, Code::PermissionDenied),
            (AuthError::ClientTokenRequired { rpc: "Reveal" }, Code::PermissionDenied),
            (AuthError::WrongClient { rpc: "Reveal" }, Code::PermissionDenied),
        ];
        for (error, code) in cases {
            let want = error.reason();
            let status = Status::from(error);
            assert_eq!((status.code(), reason(&status).as_str()), (code, want));
        }
        let throttled = Status::from(AuthError::Throttled { retry_after: Duration::from_millis(500) });
        assert_eq!(throttled.get_details_retry_info().and_then(|r| r.retry_delay), Some(Duration::from_millis(500)));
    }
}

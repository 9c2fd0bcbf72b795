//! Typed errors: gRPC status codes and rich details mapped to what a caller acts on. The vault
//! being unreachable, a configuration mistake, the provider refusing a code and the provider
//! being unreachable are told apart; Display shows the cause chain.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// What went wrong with a vault call. Messages never contain a code or a token.
///
/// ```
/// use vault_client::Error;
/// let status = tonic::Status::already_exists("the pair already has an active code");
/// assert!(matches!(Error::from(status), Error::AlreadyBound));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint could not be reached, or TLS could not be set up.
    #[error("cannot connect to the vault at {endpoint}: {}", chain(.source))]
    Connect {
        /// The address given.
        endpoint: String,
        /// What failed, with its causes.
        source: tonic::transport::Error,
    },
    /// A call got no answer from the vault: the connection failed or was reset (a wrong
    /// address, `http://` against a TLS server, the vault down). Writes sent by this crate were
    /// resent with their request id first.
    #[error(
        "the vault did not answer ({message}); check the address, the scheme (https:// for a TLS server) and that it runs"
    )]
    VaultUnreachable {
        /// What the transport said.
        message: String,
    },
    /// The request was malformed (including a code in the wrong format for the provider, and a
    /// bad endpoint or token in the options); `message` says which field and why.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server's (or this crate's) explanation.
        message: String,
    },
    /// The pair already has an active code (Bind); use Rotate, or Revoke first.
    #[error("the pair already has an active code")]
    AlreadyBound,
    /// No such binding.
    #[error("no such binding")]
    NotFound,
    /// The binding is revoked; Bind a new code to use it again.
    #[error("the binding is revoked")]
    Revoked,
    /// The provider refused the code; nothing was changed. `hint` says what to do.
    #[error("the provider refused the code ({outcome}: {server_response}): {hint}")]
    ProbeRejected {
        /// Advice for the user, e.g. "use the client auth code, not the login password".
        hint: String,
        /// The probe's outcome, e.g. `REJECTED`.
        outcome: String,
        /// What the provider's server answered.
        server_response: String,
    },
    /// The provider could not be reached or answered oddly; nothing was changed. Retryable
    /// after `retry_after`.
    #[error("the provider is unavailable: {message}")]
    ProviderUnavailable {
        /// The server's explanation, including the probe outcome.
        message: String,
        /// The ErrorInfo reason, e.g. `PROBE_UNREACHABLE` or `PROBE_TIMED_OUT`.
        reason: String,
        /// When to try again, if the vault said.
        retry_after: Option<Duration>,
    },
    /// The mailbox's probe budget is spent; retry after the delay, if the server gave one.
    #[error("probe budget exhausted; retry {}", after(.retry_after.as_ref()))]
    RateLimited {
        /// How long until a probe is available again.
        retry_after: Option<Duration>,
    },
    /// `expected_version` did not match, or the binding changed concurrently. Re-read and retry.
    #[error("version conflict: {message}")]
    VersionConflict {
        /// The server's explanation.
        message: String,
    },
    /// No token, or an unknown or revoked one.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The server's explanation.
        message: String,
    },
    /// A valid token with the wrong role or for another client.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The server's explanation.
        message: String,
    },
    /// This address failed to authenticate too often; calls with a valid token still work.
    #[error("too many failed authentications from this address; retry {}", after(.retry_after.as_ref()))]
    AuthThrottled {
        /// When the next attempt will be looked at.
        retry_after: Option<Duration>,
    },
    /// The vault answered but cannot serve now (it cannot read its token table or write its
    /// database, its disk is full, a key rotation stopped). Retryable.
    #[error("the vault is unavailable: {message}")]
    VaultUnavailable {
        /// The server's explanation.
        message: String,
    },
    /// The vault lost its database connection while committing this call's change, so it may
    /// have been made, and no resend with the same request id (Bind, Rotate, Revoke) could tell.
    /// Read the binding (Get) before doing it again.
    #[error("the change may have been made (the vault lost its database while committing): {message}")]
    OutcomeUnknown {
        /// The server's explanation.
        message: String,
    },
    /// A stored ciphertext failed authentication (tampering or corruption).
    #[error("the stored code failed authentication")]
    Tampered,
    /// Any other status (internal errors, timeouts, ...).
    #[error("vault error {code:?}: {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

/// An error and its sources, joined with ": ".
/// "after 360 s", or "later" when the server gave no delay.
fn after(retry_after: Option<&Duration>) -> String {
    match retry_after {
        // Whole seconds: a delay is never given finer.
        Some(d) => format!("after {} s", d.as_secs().max(1)),
        None => "later".into(),
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let reason = s.get_details_error_info().map(|i| (i.reason, i.metadata));
        let retry_after = s.get_details_retry_info().and_then(|r| r.retry_delay);
        let message = s.message().to_owned();
        match (s.code(), reason) {
            (Code::InvalidArgument, _) => Self::InvalidArgument { message },
            (Code::AlreadyExists, _) => Self::AlreadyBound,
            (Code::NotFound, _) => Self::NotFound,
            (Code::FailedPrecondition, Some((r, meta))) if r == "PROBE_REJECTED" => Self::ProbeRejected {
                hint: meta.get("hint").cloned().unwrap_or(message),
                outcome: meta.get("outcome").cloned().unwrap_or_default(),
                server_response: meta.get("server_response").cloned().unwrap_or_default(),
            },
            (Code::FailedPrecondition, Some((r, _))) if r == "REVOKED" => Self::Revoked,
            (Code::Unavailable, Some((reason, _))) if reason.starts_with("PROBE_") => {
                Self::ProviderUnavailable { message, reason, retry_after }
            }
            (Code::ResourceExhausted, Some((r, _))) if r == "AUTH_THROTTLED" => Self::AuthThrottled { retry_after },
            (Code::ResourceExhausted, Some((r, _))) if r == "PROBE_BUDGET_EXHAUSTED" => {
                Self::RateLimited { retry_after }
            }
            (Code::Unavailable, Some((r, _))) if r == "STORAGE_OUTCOME_UNKNOWN" => Self::OutcomeUnknown { message },
            // Another RESOURCE_EXHAUSTED is the vault's own (`STORAGE_FULL`: its disk is full),
            // not the mailbox's probe budget.
            (Code::Unavailable | Code::ResourceExhausted, Some(_)) => Self::VaultUnavailable { message },
            // A deadline ran out (tonic says CANCELLED "Timeout expired", on either side): the
            // call did not finish in time, which may also be a connection that never opened
            // within it. Not a refused connection, so not "check the address".
            (Code::Cancelled | Code::DeadlineExceeded, None)
                if s.code() == Code::DeadlineExceeded || message.contains("Timeout expired") =>
            {
                Self::Other { code: Code::DeadlineExceeded, message }
            }
            // No ErrorInfo: the transport failed (or h2 refused, ENHANCE_YOUR_CALM), not the
            // vault's logic.
            (Code::Unavailable | Code::Unknown | Code::Cancelled | Code::ResourceExhausted, None) => {
                Self::VaultUnreachable { message }
            }
            (Code::Aborted, _) => Self::VersionConflict { message },
            (Code::Unauthenticated, _) => Self::Unauthenticated { message },
            (Code::PermissionDenied, _) => Self::PermissionDenied { message },
            // A damaged request record is not a code that failed authentication.
            (Code::DataLoss, Some((r, _))) if r == "REQUEST_RECORD_DAMAGED" => {
                Self::Other { code: Code::DataLoss, message }
            }
            (Code::DataLoss, _) => Self::Tampered,
            (code, _) => Self::Other { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    fn with_reason(code: Code, reason: &str, meta: &[(&str, &str)]) -> tonic::Status {
        let meta = meta.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<HashMap<_, _>>();
        tonic::Status::with_error_details(code, "m", ErrorDetails::with_error_info(reason, "authcode-vault", meta))
    }

    #[test]
    fn rich_details_become_typed_errors() {
        let rejected = with_reason(
            Code::FailedPrecondition,
            "PROBE_REJECTED",
            &[("hint", "use the client auth code"), ("outcome", "REJECTED"), ("server_response", "NO [AUTH] bad")],
        );
        let e = Error::from(rejected);
        assert!(matches!(&e, Error::ProbeRejected { hint, server_response, .. }
            if hint == "use the client auth code" && server_response == "NO [AUTH] bad"));
        assert_eq!(e.to_string(), "the provider refused the code (REJECTED: NO [AUTH] bad): use the client auth code");
        assert!(matches!(Error::from(with_reason(Code::FailedPrecondition, "REVOKED", &[])), Error::Revoked));
        // As the vault sends it: ErrorInfo and RetryInfo.
        let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(360)));
        details.set_error_info("PROBE_BUDGET_EXHAUSTED", "authcode-vault", HashMap::new());
        let limited = tonic::Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        let limited = Error::from(limited);
        assert!(matches!(limited, Error::RateLimited { retry_after: Some(d) } if d.as_secs() == 360));
        assert_eq!(limited.to_string(), "probe budget exhausted; retry after 360 s");
        assert!(Error::AuthThrottled { retry_after: None }.to_string().ends_with("retry later"));
        let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(800)));
        details.set_error_info("AUTH_THROTTLED", "authcode-vault", HashMap::new());
        let throttled = tonic::Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        assert!(
            matches!(Error::from(throttled), Error::AuthThrottled { retry_after: Some(d) } if d.as_millis() == 800)
        );
        // A full disk is the vault's, not the mailbox's probe budget; nor is a transport's
        // RESOURCE_EXHAUSTED without the vault's ErrorInfo.
        assert!(matches!(
            Error::from(tonic::Status::resource_exhausted("GOAWAY ENHANCE_YOUR_CALM")),
            Error::VaultUnreachable { .. }
        ));
        assert!(matches!(
            Error::from(with_reason(Code::ResourceExhausted, "STORAGE_FULL", &[])),
            Error::VaultUnavailable { .. }
        ));
        assert!(matches!(
            Error::from(with_reason(Code::ResourceExhausted, "PROBE_BUDGET_EXHAUSTED", &[])),
            Error::RateLimited { .. }
        ));
        for reason in ["TOKENS_UNAVAILABLE", "STORAGE_UNAVAILABLE", "ROTATION_STOPPED"] {
            assert!(matches!(Error::from(with_reason(Code::Unavailable, reason, &[])), Error::VaultUnavailable { .. }));
        }
        let provider = Error::from(with_reason(Code::Unavailable, "PROBE_UNREACHABLE", &[]));
        assert!(matches!(provider, Error::ProviderUnavailable { ref reason, .. } if reason == "PROBE_UNREACHABLE"));
        // The vault down is not the provider down.
        assert!(matches!(Error::from(tonic::Status::unavailable("tcp connect error")), Error::VaultUnreachable { .. }));
        assert!(matches!(Error::from(tonic::Status::cancelled("h2 reset")), Error::VaultUnreachable { .. }));
        // A deadline is no unreachable vault (vaultctl said "check the address" for it).
        assert!(matches!(
            Error::from(tonic::Status::cancelled("Timeout expired")),
            Error::Other { code: Code::DeadlineExceeded, .. }
        ));
        assert!(matches!(Error::from(tonic::Status::data_loss("x")), Error::Tampered));
        let damaged = Error::from(with_reason(Code::DataLoss, "REQUEST_RECORD_DAMAGED", &[]));
        assert!(matches!(damaged, Error::Other { code: Code::DataLoss, .. }), "{damaged}");
        assert!(matches!(Error::from(tonic::Status::aborted("x")), Error::VersionConflict { .. }));
        assert!(matches!(Error::from(tonic::Status::unauthenticated("x")), Error::Unauthenticated { .. }));
        assert!(matches!(Error::from(tonic::Status::permission_denied("x")), Error::PermissionDenied { .. }));
        assert!(matches!(Error::from(tonic::Status::internal("x")), Error::Other { code: Code::Internal, .. }));
    }
}

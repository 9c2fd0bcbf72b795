//! Typed errors: gRPC status codes and rich details mapped to what a caller acts on.

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
    #[error("cannot connect to the vault: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The request was malformed (including a code in the wrong format for the provider);
    /// `message` says which field and why.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server's explanation.
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
    #[error("the provider refused the code: {hint}")]
    ProbeRejected {
        /// Advice for the user, e.g. "use the client auth code, not the login password".
        hint: String,
    },
    /// The provider could not be reached or answered oddly; nothing was changed. Retryable.
    #[error("the provider is unavailable: {message}")]
    ProviderUnavailable {
        /// The server's explanation, including the probe outcome.
        message: String,
    },
    /// The mailbox's probe budget is spent; retry after the delay, if the server gave one.
    #[error("probe budget exhausted; retry after {retry_after:?}")]
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
    #[error("too many failed authentications from this address; retry after {retry_after:?}")]
    AuthThrottled {
        /// When the next attempt will be looked at.
        retry_after: Option<Duration>,
    },
    /// The vault itself cannot serve now (e.g. it cannot read its token table). Retryable.
    #[error("the vault is unavailable: {message}")]
    VaultUnavailable {
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

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let reason = s.get_details_error_info().map(|i| (i.reason, i.metadata));
        let message = s.message().to_owned();
        match (s.code(), reason) {
            (Code::InvalidArgument, _) => Self::InvalidArgument { message },
            (Code::AlreadyExists, _) => Self::AlreadyBound,
            (Code::NotFound, _) => Self::NotFound,
            (Code::FailedPrecondition, Some((r, meta))) if r == "PROBE_REJECTED" => {
                Self::ProbeRejected { hint: meta.get("hint").cloned().unwrap_or(message) }
            }
            (Code::FailedPrecondition, Some((r, _))) if r == "REVOKED" => Self::Revoked,
            (Code::Unavailable, Some((r, _))) if r == "TOKENS_UNAVAILABLE" => Self::VaultUnavailable { message },
            (Code::Unavailable, _) => Self::ProviderUnavailable { message },
            (Code::ResourceExhausted, Some((r, _))) if r == "AUTH_THROTTLED" => {
                Self::AuthThrottled { retry_after: s.get_details_retry_info().and_then(|r| r.retry_delay) }
            }
            (Code::ResourceExhausted, _) => {
                Self::RateLimited { retry_after: s.get_details_retry_info().and_then(|r| r.retry_delay) }
            }
            (Code::Aborted, _) => Self::VersionConflict { message },
            (Code::Unauthenticated, _) => Self::Unauthenticated { message },
            (Code::PermissionDenied, _) => Self::PermissionDenied { message },
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

    #[test]
    fn rich_details_become_typed_errors() {
        let meta = HashMap::from([("hint".to_owned(), "use the client auth code".to_owned())]);
        let rejected = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "refused",
            ErrorDetails::with_error_info("PROBE_REJECTED", "authcode-vault", meta),
        );
        assert!(matches!(Error::from(rejected), Error::ProbeRejected { hint } if hint == "use the client auth code"));
        let revoked = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "revoked",
            ErrorDetails::with_error_info("REVOKED", "authcode-vault", HashMap::new()),
        );
        assert!(matches!(Error::from(revoked), Error::Revoked));
        let limited = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(360))),
        );
        assert!(matches!(Error::from(limited), Error::RateLimited { retry_after: Some(d) } if d.as_secs() == 360));
        let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(800)));
        details.set_error_info("AUTH_THROTTLED", "authcode-vault", HashMap::new());
        let throttled = tonic::Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        assert!(
            matches!(Error::from(throttled), Error::AuthThrottled { retry_after: Some(d) } if d.as_millis() == 800)
        );
        let tokens_down = tonic::Status::with_error_details(
            Code::Unavailable,
            "cannot read tokens",
            ErrorDetails::with_error_info("TOKENS_UNAVAILABLE", "authcode-vault", HashMap::new()),
        );
        assert!(matches!(Error::from(tokens_down), Error::VaultUnavailable { .. }));
        assert!(matches!(Error::from(tonic::Status::data_loss("x")), Error::Tampered));
        assert!(matches!(Error::from(tonic::Status::aborted("x")), Error::VersionConflict { .. }));
        assert!(matches!(Error::from(tonic::Status::unauthenticated("x")), Error::Unauthenticated { .. }));
        assert!(matches!(Error::from(tonic::Status::permission_denied("x")), Error::PermissionDenied { .. }));
        assert!(matches!(Error::from(tonic::Status::internal("x")), Error::Other { code: Code::Internal, .. }));
    }
}

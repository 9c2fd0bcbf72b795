//! Typed errors: gRPC status codes and rich details mapped to what a caller acts on.

use tonic::Code;
use tonic_types::StatusExt;

/// What went wrong with a vault call. Messages never contain a code or a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint could not be reached or set up.
    #[error("cannot connect to the vault: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The request was malformed; `message` says which field and why.
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
    /// The pair already has an active code.
    #[error("the pair already has an active code")]
    AlreadyBound,
    /// No such binding.
    #[error("no such binding")]
    NotFound,
    /// The binding is revoked.
    #[error("the binding is revoked")]
    Revoked,
    /// The provider refused the code; `hint` says what to do.
    #[error("the provider refused the code: {hint}")]
    ProbeRejected { hint: String },
    /// The provider could not be reached; nothing was changed, retry later.
    #[error("the provider is unavailable: {message}")]
    ProviderUnavailable { message: String },
    /// `expected_version` did not match, or the binding changed concurrently.
    #[error("version conflict: {message}")]
    VersionConflict { message: String },
    /// The mailbox's probe budget is spent; retry after the delay (if the server gave one).
    #[error("probe budget exhausted; retry after {retry_after:?}")]
    RateLimited { retry_after: Option<std::time::Duration> },
    /// A stored ciphertext failed authentication (tampering or corruption).
    #[error("the stored code failed authentication")]
    Tampered,
    /// Any other status.
    #[error("vault error {code:?}: {message}")]
    Other { code: Code, message: String },
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
            (Code::Unavailable, _) => Self::ProviderUnavailable { message },
            (Code::Aborted, _) => Self::VersionConflict { message },
            (Code::ResourceExhausted, _) => {
                Self::RateLimited { retry_after: s.get_details_retry_info().and_then(|r| r.retry_delay) }
            }
            (Code::DataLoss, _) => Self::Tampered,
            (code, _) => Self::Other { code, message },
        }
    }
}

//! The domain error. `grpc::status` maps every variant to a `Status`.

use crate::crypto::CryptoError;
use crate::ids::InvalidId;
use crate::probe::FailedProbe;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("invalid {}: {}", .0.field, .0.reason)]
    InvalidId(#[from] InvalidId),
    /// A field other than an identifier is malformed.
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// The code cannot be this provider's; the hint says what the user probably did.
    #[error("the auth code has the wrong format for {provider}")]
    BadCodeFormat { field: &'static str, provider: String, hint: String },
    #[error("no provider is configured for the domain {domain}")]
    UnknownProvider { domain: String },
    #[error("no such binding")]
    NotFound,
    #[error("the pair already has an active code")]
    AlreadyExists,
    #[error("the binding is revoked")]
    Revoked,
    /// `expected_version` did not match, or the binding changed concurrently.
    #[error("version conflict: {0}")]
    Aborted(String),
    /// The mailbox's probe budget is spent; nothing was sent to the provider.
    #[error("probe budget for this mailbox exhausted; retry in {retry_after:?}")]
    RateLimited { retry_after: std::time::Duration },
    /// The probe did not accept the code; nothing was changed.
    #[error("the provider did not accept the code: {}", .0.report().outcome.as_str())]
    ProbeFailed(FailedProbe),
    /// A stored ciphertext failed authentication.
    #[error("a stored code failed authentication")]
    DataLoss,
    /// A request id was used before a data-key rotation: whether this is the same request can no
    /// longer be checked, so it is neither replayed nor run again.
    #[error("the request id cannot be checked since the data-key rotation")]
    RequestUnverifiable,
    /// A remembered request's row failed its MAC (edited or corrupted).
    #[error("a remembered request failed authentication")]
    RequestDamaged,
    #[error("storage failed: {0}")]
    Store(StoreError),
    /// A new data key cannot be wrapped: the passphrase changed after this server unlocked.
    #[error("the passphrase changed after this server started")]
    PassphraseChanged,
    /// A data-key rotation stopped before the old key was deleted; it resumes on the next call.
    #[error("the data-key rotation stopped: {0}")]
    RotationStopped(String),
    /// RotateDataKey on replicas sharing a PostgreSQL database: the others would not know the
    /// new key.
    #[error("data-key rotation is not available on a shared database")]
    RotationShared,
    /// A binding whose provider is no longer in the registry (removed from the providers file).
    #[error("the binding's provider {0} is no longer configured (--providers)")]
    ProviderGone(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            StoreError::AlreadyExists => Self::AlreadyExists,
            StoreError::Revoked => Self::Revoked,
            StoreError::Conflict => Self::Aborted("the binding changed concurrently; read it again and retry".into()),
            StoreError::RequestIdTaken => Self::InvalidField {
                field: "request_id",
                reason: "was already used for a different request; use a new id for a new request".into(),
            },
            other => Self::Store(other),
        }
    }
}

impl From<CryptoError> for VaultError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Decrypt | CryptoError::UnknownKey(_) => Self::DataLoss,
            CryptoError::KdfParams(m) => Self::Internal(m),
        }
    }
}

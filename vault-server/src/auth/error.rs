//! Why a call was not let in. A domain error with no transport in it: `grpc::status` maps every
//! variant, with an ErrorInfo reason a client can act on. No variant tells whether a token id
//! exists: an unknown id, a wrong secret and a revoked token are all [`AuthError::InvalidToken`].

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing authorization: Bearer <token>")]
    MissingToken,
    #[error("malformed authorization header; expected Bearer avt_...")]
    MalformedToken,
    #[error("unknown or revoked token")]
    InvalidToken,
    /// Too many failed authentications from one peer address.
    #[error("too many failed authentications from this address")]
    Throttled { retry_after: Duration },
    /// The token table could not be re-read for too long; no token is vouched for.
    #[error("the token table cannot be read")]
    TokensUnavailable,
    #[error("{rpc} needs an admin token")]
    AdminRequired { rpc: &'static str },
    #[error("{rpc} needs the client's own token, not an admin token")]
    ClientTokenRequired { rpc: &'static str },
    #[error("this token may {rpc} only its own client's pairs")]
    WrongClient { rpc: &'static str },
}

impl AuthError {
    /// The ErrorInfo reason, also the metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingToken => "MISSING_TOKEN",
            Self::MalformedToken => "MALFORMED_TOKEN",
            Self::InvalidToken => "INVALID_TOKEN",
            Self::Throttled { .. } => "AUTH_THROTTLED",
            Self::TokensUnavailable => "TOKENS_UNAVAILABLE",
            Self::AdminRequired { .. } => "ADMIN_REQUIRED",
            Self::ClientTokenRequired { .. } => "CLIENT_TOKEN_REQUIRED",
            Self::WrongClient { .. } => "WRONG_CLIENT",
        }
    }
}

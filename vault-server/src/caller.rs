//! Who a caller is, what it may do, and why a call was not let in: leaf types with no transport
//! in them, shared by authentication, the domain service and the status map.

use std::fmt;

use std::time::Duration;

use crate::ids::ClientId;

/// A token's role: `admin` or `client:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Every RPC except Reveal.
    Admin,
    /// Reveal and GetCredential for pairs whose client is this id.
    Client(ClientId),
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once(':') {
            None if s == "admin" => Some(Self::Admin),
            Some(("client", id)) => ClientId::parse(id).ok().filter(|c| c.as_str() == id).map(Self::Client),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admin => f.write_str("admin"),
            Self::Client(id) => write!(f, "client:{id}"),
        }
    }
}

/// An authenticated caller, put into each request's extensions by the interceptor.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
}

impl Caller {
    /// The vault itself, for work it schedules (a verification sweep); no token names it.
    pub fn system() -> Self {
        Self { token_id: "system".into(), role: Role::Admin }
    }

    /// Admin-only RPCs.
    pub fn require_admin(&self, rpc: &'static str) -> Result<(), AuthError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Client(_) => Err(AuthError::AdminRequired { rpc }),
        }
    }

    /// Reveal: only the client itself, never an admin.
    pub fn require_client(&self, rpc: &'static str, client: &ClientId) -> Result<(), AuthError> {
        match &self.role {
            Role::Client(own) if own == client => Ok(()),
            Role::Client(_) => Err(AuthError::WrongClient { rpc }),
            Role::Admin => Err(AuthError::ClientTokenRequired { rpc }),
        }
    }

    /// GetCredential: an admin, or the client for its own pairs.
    pub fn require_admin_or_client(&self, rpc: &'static str, client: &ClientId) -> Result<(), AuthError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Client(_) => self.require_client(rpc, client),
        }
    }
}

/// Why a call was not let in. `grpc::status` maps every variant, with an ErrorInfo reason a
/// client can act on. No variant tells whether a token id exists: an unknown id, a wrong secret
/// and a revoked token are all [`AuthError::InvalidToken`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print() {
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        let c = Role::parse("client:sender").unwrap();
        assert_eq!(c.to_string(), "client:sender");
        for bad in ["", "root", "client:", "client:Bad", "client:a b", "admin:x"] {
            assert!(Role::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn permissions() {
        let sender = ClientId::parse("sender").unwrap();
        let other = ClientId::parse("foxmail").unwrap();
        let admin = Caller { token_id: "tk_1".into(), role: Role::Admin };
        let client = Caller { token_id: "tk_2".into(), role: Role::Client(sender.clone()) };
        assert!(admin.require_admin("Bind").is_ok());
        assert_eq!(client.require_admin("Bind"), Err(AuthError::AdminRequired { rpc: "Bind" }));
        assert_eq!(admin.require_client("Reveal", &sender), Err(AuthError::ClientTokenRequired { rpc: "Reveal" }));
        assert!(client.require_client("Reveal", &sender).is_ok());
        assert_eq!(client.require_client("Reveal", &other), Err(AuthError::WrongClient { rpc: "Reveal" }));
        assert!(admin.require_admin_or_client("GetCredential", &other).is_ok());
        assert!(client.require_admin_or_client("GetCredential", &other).is_err());
    }
}

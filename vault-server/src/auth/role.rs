//! Who a caller is and what it may do.

use std::fmt;

use super::AuthError;
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

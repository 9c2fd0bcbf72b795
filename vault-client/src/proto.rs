//! The generated `vault.v1` client and messages (the `vault-proto` crate). Messages that carry
//! a code print it redacted.

pub use vault_proto::*;

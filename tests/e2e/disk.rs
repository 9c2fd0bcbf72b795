//! Disk faults, for real: a full disk (the data dir on a small tmpfs that is then filled; the
//! suite runs as root, so it can mount one), a database file deleted under the running server,
//! and a read-only data dir. Each gives one clear error, never a panic, lost writes or a silent
//! empty vault.

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

/// A mount (a tmpfs, or a bind mount) undone when the test ends.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Self {
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

impl Drop for Mount {
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
    let disk = Mount::tmpfs(&tmp.path().join("disk"), "4m");
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
    let bind = proto::BindRequest {
        mailbox: BOB.into(),
        client: "sender".into(),
        auth_code: BOB_CODE.into(),
        ..Default::default()
    };
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

#[tokio::test]
async fn a_database_deleted_under_the_server_refuses_writes_and_is_never_replaced_by_an_empty_vault() {
    let mut stack = Stack::start();
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let mut sender = stack.as_client("sender").await;
    std::fs::remove_file(stack.data.db()).unwrap();
    // A write would go to the unlinked file and vanish at the next start: it is refused.
    let bind = proto::BindRequest {
        mailbox: BOB.into(),
        client: "sender".into(),
        auth_code: BOB_CODE.into(),
        ..Default::default()
    };
    let status = admin.raw().bind(bind).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.get_details_error_info().map(|i| i.reason).as_deref(), Some("STORAGE_UNAVAILABLE"));
    // Reads go on from the open file.
    let revealed = sender.reveal(ALICE, "sender").await.unwrap();
    assert_eq!(revealed.code.expose_secret(), ALICE_CODE);
    assert!(stack.server.stop().success());
    // The next start says what happened, instead of suggesting `init`.
    let dir = crate::harness::vault::path_str(&stack.data.dir).to_owned();
    let pf = crate::harness::vault::path_str(&stack.data.passphrase_file).to_owned();
    let out = crate::harness::vault::run(&["serve", "--data-dir", &dir, "--passphrase-file", &pf], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("was deleted or moved") && stderr.contains("restore"), "{stderr}");
    assert!(!stderr.contains("panicked"));
    // `serve --dev` does not start an empty vault there either.
    let out = crate::harness::vault::run(&["serve", "--dev", "--data-dir", &dir, "--passphrase-file", &pf], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("was deleted or moved"), "{stderr}");
    assert!(!stack.data.db().exists(), "serve --dev created a new, empty vault");
}

#[test]
fn a_read_only_data_dir_stops_start_up_with_one_clear_line() {
    let tmp = tempfile::Builder::new().prefix("vault-ro").tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    // A read-only bind mount of the data dir over itself (root can; permissions would not stop root).
    let dir = crate::harness::vault::path_str(&data.dir).to_owned();
    let ok = |args: &[&str]| Command::new("mount").args(args).status().expect("mount").success();
    assert!(ok(&["--bind", &dir, &dir]), "bind mount needs root");
    let _unmount = Mount(data.dir.clone());
    assert!(ok(&["-o", "remount,ro,bind", &dir]));
    let pf = crate::harness::vault::path_str(&data.passphrase_file).to_owned();
    let out = crate::harness::vault::run(
        &["serve", "--data-dir", &dir, "--passphrase-file", &pf, "--listen", "127.0.0.1:0"],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].to_lowercase().contains("read-only"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

//! Key material: changing the passphrase re-wraps the data keys only, works while serving, and
//! afterwards exactly the new passphrase opens the vault.

use std::os::unix::fs::PermissionsExt;

use secrecy::{ExposeSecret, SecretString};

use crate::harness::vault::{path_str, run};
use crate::harness::{ALICE, ALICE_CODE, PASSPHRASE, Stack};

fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test]
async fn passphrase_change_while_serving_then_only_the_new_one_opens() {
    let mut stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    // Minted now, under the old passphrase; it must keep working after the change.
    stack.client_token("sender");
    let root = stack.data.dir.parent().unwrap().to_owned();
    let dir = path_str(&stack.data.dir).to_owned();
    let old_file = secret_file(&root, "old-passphrase", PASSPHRASE);
    let new_passphrase = "a brand new passphrase 2026";
    let new_file = secret_file(&root, "new-passphrase", new_passphrase);
    let change = |current: &std::path::Path, env: &[(&str, &str)], new: Option<&std::path::Path>| {
        let mut args = vec!["passphrase", "change", "--data-dir", &dir, "--passphrase-file", path_str(current)];
        if let Some(n) = new {
            args.extend(["--new-passphrase-file", path_str(n)]);
        }
        run(&args, env)
    };

    // Refusals change nothing: a wrong current passphrase, a short or missing new one.
    let wrong = secret_file(&root, "wrong", "not the passphrase at all");
    let out = change(&wrong, &[], Some(&new_file));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    let out = change(&old_file, &[("VAULT_NEW_PASSPHRASE", "short")], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12 characters"), "{out:?}");
    let out = change(&old_file, &[], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--new-passphrase-file"), "{out:?}");

    let out = change(&old_file, &[], Some(&new_file));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for shown in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(shown);
        assert!(!text.contains(new_passphrase) && !text.contains(PASSPHRASE), "{text}");
    }
    // The running server is not disturbed.
    let revealed = stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap();
    assert_eq!(revealed.code.expose_secret(), ALICE_CODE);

    // After a restart, the old passphrase is refused and the new one opens everything.
    assert!(stack.server.stop().success());
    let serve = |file: &std::path::Path| {
        run(&["serve", "--data-dir", &dir, "--passphrase-file", path_str(file), "--listen", "127.0.0.1:1"], &[])
    };
    let out = serve(&old_file);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"), "{out:?}");
    std::fs::write(&stack.data.passphrase_file, new_passphrase).unwrap();
    stack.restart_after_stop();
    let revealed = stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap();
    assert_eq!(revealed.code.expose_secret(), ALICE_CODE);
    // Tokens minted before the change still work (their MAC key comes from the data key).
    stack.admin().await.get(ALICE, "sender").await.unwrap();
}

#[tokio::test]
async fn backup_while_serving_verify_it_and_restore_it_into_a_vault_that_serves() {
    use crate::harness::vault::{DataDir, VaultServer};
    use crate::harness::{BOB, BOB_CODE};
    let stack = Stack::start();
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    admin.bind(BOB, "sender", SecretString::from(BOB_CODE)).await.unwrap();
    let bob = crate::destruction::sealed(&stack, BOB);
    admin.revoke(BOB, "sender", "left").await.unwrap();
    let sender_token = stack.client_token("sender");
    let root = stack.data.dir.parent().unwrap().to_owned();
    let dir = path_str(&stack.data.dir).to_owned();
    let file = root.join("vault-backup.db");

    // Taken while serving.
    let out = run(&["backup", "--data-dir", &dir, path_str(&file)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let again = run(&["backup", "--data-dir", &dir, path_str(&file)], &[]);
    assert!(!again.status.success(), "an existing backup file was overwritten");
    // Ciphertext only, and nothing of the revoked code.
    let bytes = std::fs::read(&file).unwrap();
    let holds = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(holds(ALICE.as_bytes()), "the backup must hold the vault's rows");
    for secret in [ALICE_CODE.as_bytes(), BOB_CODE.as_bytes(), PASSPHRASE.as_bytes(), &bob.ciphertext, &bob.nonce] {
        assert!(!holds(secret), "the backup holds a secret or a revoked ciphertext");
    }

    // Verify: every active code opens with the passphrase; a wrong one is refused.
    let pf = path_str(&stack.data.passphrase_file).to_owned();
    let out = run(&["backup", "verify", path_str(&file), "--passphrase-file", &pf], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && stdout.contains("1 active codes open, 1 revoked"), "{stdout} {out:?}");
    let wrong = root.join("wrong");
    std::fs::write(&wrong, "not the passphrase at all").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&["backup", "verify", path_str(&file), "--passphrase-file", path_str(&wrong)], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("wrong passphrase"), "{out:?}");
    // It names the backup, not the scratch copy it was checked in (gone by then).
    assert!(stderr.contains(path_str(&file)) && !stderr.contains("vault-verify"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "verify must not write the backup");

    // Restore into a new dir (never into a non-empty one) and serve it.
    let restored = root.join("restored");
    let out = run(&["restore", "--data-dir", path_str(&restored), path_str(&file)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["restore", "--data-dir", path_str(&restored), path_str(&file)], &[]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not empty"), "{out:?}");
    let data = DataDir { dir: restored, passphrase_file: stack.data.passphrase_file.clone() };
    let server = VaultServer::start(&data, &Stack::default_args(&stack.pki, &stack.dovecot));
    let revealed = server.client_with(Some(&sender_token)).await.reveal(ALICE, "sender").await.unwrap();
    assert_eq!(revealed.code.expose_secret(), ALICE_CODE);
    assert!(matches!(
        server.client_with(Some(&sender_token)).await.reveal(BOB, "sender").await,
        Err(vault_client::Error::Revoked)
    ));
}

#[test]
fn kill_dash_nine_during_a_passphrase_change_leaves_exactly_one_passphrase_working() {
    use crate::harness::vault::{BIN, DataDir};
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    let dir = path_str(&data.dir).to_owned();
    let (mut current, mut next) =
        (secret_file(tmp.path(), "a", PASSPHRASE), secret_file(tmp.path(), "b", "the other passphrase, rotated"));
    let opens = |file: &std::path::Path| {
        run(&["token", "create", "--data-dir", &dir, "--passphrase-file", path_str(file), "--admin"], &[])
            .status
            .success()
    };
    // Kill points spread over the change (two Argon2 derivations, then one short transaction).
    let mut changed = 0;
    for (round, delay_ms) in [0u64, 60, 120, 180, 240, 300, 400, 600, 900, 1500, 4000].into_iter().enumerate() {
        let mut child = std::process::Command::new(BIN)
            .args(["passphrase", "change", "--data-dir", &dir, "--passphrase-file", path_str(&current)])
            .args(["--new-passphrase-file", path_str(&next)])
            .env_remove("VAULT_PASSPHRASE")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        let (old_opens, new_opens) = (opens(&current), opens(&next));
        assert!(old_opens != new_opens, "round {round} ({delay_ms} ms): old opens {old_opens}, new opens {new_opens}");
        if new_opens {
            changed += 1;
            std::mem::swap(&mut current, &mut next);
        }
    }
    // Both sides of the race were hit: some kills came before the commit, some after.
    assert!(changed > 0 && changed < 11, "{changed} of 11 rounds changed the passphrase");
}

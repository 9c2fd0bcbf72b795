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

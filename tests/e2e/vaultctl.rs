//! vaultctl, the admin CLI, against the real server and Dovecot: a code on stdin (and never in
//! /proc/<pid>/cmdline), the review in table, JSON and CSV, the audit trail, reveal, and the
//! exit code of each class of failure.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, Stack};

/// Builds vaultctl (the client crate's `cli` feature) once, as the README does: from the
/// repository's root, with the workspace's features (so it reuses the suite's build).
fn vaultctl_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--locked", "--bin", "vaultctl", "--features", "vault-client/cli"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of vaultctl failed");
        PathBuf::from(crate::harness::vault::BIN).with_file_name("vaultctl")
    })
}

fn vaultctl(stack: &Stack, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(vaultctl_bin())
        .args(args)
        .env("VAULT_ADDR", stack.server.endpoint())
        .env("VAULT_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vaultctl");
    if let Some(input) = stdin {
        // The process is waiting for the code now: its command line must not hold it.
        // Right after spawn the child may not have exec'd yet: wait for its own command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let cmdline = loop {
            let raw = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
            let text = String::from_utf8_lossy(&raw).into_owned();
            if text.contains("vaultctl") || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(cmdline.contains("vaultctl"), "{args:?}: {cmdline:?}");
        assert!(input.trim().is_empty() || !cmdline.contains(input.trim()), "the code is in argv: {cmdline}");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn vaultctl_binds_from_stdin_reviews_audits_and_says_what_failed_by_exit_code() {
    let stack = Stack::start();
    let admin = stack.admin_token.clone();
    let ok = |o: &Output| assert!(o.status.success(), "{:?}: {}", o.status, String::from_utf8_lossy(&o.stderr));

    let out = vaultctl(&stack, &admin, &["bind", ALICE, "sender"], Some(&format!("{ALICE_CODE}\n")));
    ok(&out);
    assert!(stdout(&out).contains("bound alice@sina.com / sender, version 1"), "{}", stdout(&out));
    assert!(!stdout(&out).contains(ALICE_CODE) && !String::from_utf8_lossy(&out.stderr).contains(ALICE_CODE));
    ok(&vaultctl(&stack, &admin, &["bind", BOB, "sender"], Some(BOB_CODE)));

    // Each class of failure has its exit code.
    let code = |o: Output| o.status.code();
    assert_eq!(code(vaultctl(&stack, &admin, &["bind", ALICE, "sender"], Some(ALICE_CODE))), Some(4), "already bound");
    assert_eq!(code(vaultctl(&stack, &admin, &["bind", ALICE, "other"], Some("WRONGwrong123456"))), Some(5), "refused");
    assert_eq!(code(vaultctl(&stack, &admin, &["get", ALICE, "nobody"], None)), Some(3), "not found");
    assert_eq!(code(vaultctl(&stack, &admin, &["bind", ALICE, "x"], Some(""))), Some(2), "no code");
    assert_eq!(code(vaultctl(&stack, "avt_nope", &["list"], None)), Some(7), "bad token");
    // Bad arguments found by an attack, each exit 1 with a misleading message before.
    let long = "x".repeat(501);
    assert_eq!(code(vaultctl(&stack, &admin, &["revoke", ALICE, "sender", "--reason", &long], None)), Some(2));
    assert_eq!(code(vaultctl(&stack, &admin, &["list", "--timeout", "0"], None)), Some(2), "timeout 0");
    // The token from the file $VAULT_TOKEN_FILE names, as the library reads it (it was ignored).
    let file = stack.data.dir.parent().unwrap().join("admin-token");
    std::fs::write(&file, &admin).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new(vaultctl_bin())
        .arg("list")
        .env("VAULT_ADDR", stack.server.endpoint())
        .env_remove("VAULT_TOKEN")
        .env("VAULT_TOKEN_FILE", &file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // $VAULT_TOKEN comes first, as in the library: a client token there is refused a list.
    let out = Command::new(vaultctl_bin())
        .arg("list")
        .env("VAULT_ADDR", stack.server.endpoint())
        .env("VAULT_TOKEN", stack.client_token("sender"))
        .env("VAULT_TOKEN_FILE", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    // Found by an attack: a code typed after the pair was repeated by clap's error; a token
    // in $VAULT_ADDR was repeated by the address error; --help showed $VAULT_ADDR's value.
    for args in [
        &["bind", ALICE, "x", "Typed1Code2Here3"][..],
        &["Typed1Code2Here3"],
        &["rotate", ALICE, "x", "--expected-version", "Typed1Code2Here3"],
        &["bind", ALICE, "x", "-Typed1Code2Here3"],
        // Found by the review: a value given to a flag that takes none, and a time unit.
        &["list", "--rejected=Typed1Code2Here3"],
        &["review", "--not-verified-for", "9Typed1Code2Here3"],
    ] {
        let typed = vaultctl(&stack, &admin, args, None);
        assert_eq!(typed.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&typed.stderr).contains("Typed1Code2Here3"), "{typed:?}");
    }
    let flag = vaultctl(&stack, &admin, &["list", "--no-such-flag"], None);
    assert!(flag.status.code() == Some(2) && String::from_utf8_lossy(&flag.stderr).contains("--no-such-flag"));
    for (addr, args) in [(admin.as_str(), &["list"][..]), ("http://u:p4ss@127.0.0.1:1", &["--help"])] {
        let out = Command::new(vaultctl_bin())
            .args(args)
            .env("VAULT_ADDR", addr)
            .env("VAULT_TOKEN", &admin)
            .output()
            .unwrap();
        let shown = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert!(!shown.contains(&admin[8..]) && !shown.contains("p4ss"), "{shown}");
    }
    // A token file that holds no token, a CA file that holds no certificate: bad arguments (2),
    // not "not authenticated" (7) or "cannot connect" (1).
    let empty = stack.data.dir.parent().unwrap().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let args = ["list", "--token-file", empty.to_str().unwrap()];
    assert_eq!(code(vaultctl(&stack, &admin, &args, None)), Some(2), "empty token file");
    let https = format!("https://{}", stack.server.endpoint().trim_start_matches("http://"));
    let args = ["list", "--addr", &https, "--ca-file", file.to_str().unwrap()];
    assert_eq!(code(vaultctl(&stack, &admin, &args, None)), Some(2), "a CA file with no certificate");
    // A closed stdout is an error (1), not a panic (101).
    let mut child = Command::new(vaultctl_bin())
        .args(["list"])
        .env("VAULT_ADDR", stack.server.endpoint())
        .env("VAULT_TOKEN", &admin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // Another scheme, or TLS options on http://, would send the token in the clear.
    for args in [&["list", "--addr", "grpcs://127.0.0.1:1"][..], &["list", "--ca-file", "/dev/null"]] {
        assert_eq!(code(vaultctl(&stack, &admin, args, None)), Some(2), "{args:?}");
    }

    // Bob changed his password; Verify finds it, and the review shows it in every format.
    stack.dovecot.set_codes(&[(ALICE, ALICE_CODE)]);
    // The verdict is the exit code (it was 0 whatever the provider said).
    let verify = vaultctl(&stack, &admin, &["verify", BOB, "sender"], None);
    assert_eq!(verify.status.code(), Some(5), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(stdout(&verify).contains("probe: REJECTED at imap.sina.com"), "{}", stdout(&verify));
    ok(&vaultctl(&stack, &admin, &["verify", ALICE, "sender"], None));
    let table = vaultctl(&stack, &admin, &["review"], None);
    ok(&table);
    let text = stdout(&table);
    let refused = text.split("== refused by the provider").nth(1).unwrap_or_default();
    assert!(refused.contains(BOB) && !refused.split("==").next().unwrap_or_default().contains(ALICE), "{text}");
    let json = stdout(&vaultctl(&stack, &admin, &["review", "--format", "json"], None));
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let rejected = &parsed["refused by the provider at the last probe"];
    assert_eq!(rejected[0]["mailbox"], BOB, "{json}");
    assert_eq!(rejected[0]["last_probe"], "REJECTED", "{json}");
    let csv = stdout(&vaultctl(&stack, &admin, &["review", "--format", "csv"], None));
    assert!(csv.starts_with("section,mailbox,client,"), "{csv}");
    assert!(
        csv.lines().any(|l| l.starts_with("refused by the provider at the last probe,bob@sina.com,sender,")),
        "{csv}"
    );
    // One header for all three sections: every row has its fields, each under its name.
    let header: Vec<&str> = csv.lines().next().unwrap_or_default().split(',').collect();
    assert!(csv.lines().all(|l| l.split(',').count() == header.len()), "{csv}");
    let bob = csv.lines().find(|l| l.starts_with("refused by the provider")).unwrap_or_default();
    let state = header.iter().position(|c| *c == "state").expect("a state column");
    assert_eq!(bob.split(',').nth(state), Some("ACTIVE"), "{csv}");

    // The audit trail, newest first; reveal with the client's token prints the code alone.
    let audit = stdout(&vaultctl(&stack, &admin, &["audit", "--limit", "2"], None));
    let (first, second) = (audit.lines().nth(1).unwrap_or_default(), audit.lines().nth(2).unwrap_or_default());
    assert!(first.contains("Verify") && first.contains(ALICE), "{audit}");
    assert!(second.contains("Verify") && second.contains(BOB), "{audit}");
    let reveal = vaultctl(&stack, &stack.client_token("sender"), &["reveal", ALICE, "sender"], None);
    ok(&reveal);
    assert_eq!(stdout(&reveal), format!("{ALICE_CODE}\n"));
}

//! The operator's contract: exit codes and one-line messages.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use crate::harness::vault::{DataDir, VaultServer, path_str, run};
use crate::harness::{PASSPHRASE, grpcurl};

fn one_line_error(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    errors[0].to_owned()
}

#[test]
fn a_wrong_passphrase_refuses_to_start_and_touches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    let before = std::fs::read(data.db()).unwrap();
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase at all").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = run(
        &["serve", "--data-dir", path_str(&data.dir), "--passphrase-file", path_str(&wrong), "--listen", "127.0.0.1:0"],
        &[],
    );
    assert!(!out.status.success());
    let line = one_line_error(&out);
    assert!(line.contains("wrong passphrase"), "{line}");
    assert!(!line.contains("not the passphrase"));
    assert_eq!(std::fs::read(data.db()).unwrap(), before, "the database changed");

    // The same through the environment variable.
    let out = run(
        &["serve", "--data-dir", path_str(&data.dir), "--listen", "127.0.0.1:0"],
        &[("VAULT_PASSPHRASE", "still not the passphrase")],
    );
    assert!(!out.status.success());
    assert!(one_line_error(&out).contains("wrong passphrase"));
}

#[test]
fn serve_on_an_uninitialised_dir_names_init() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("never");
    let out =
        run(&["serve", "--data-dir", path_str(&dir), "--listen", "127.0.0.1:0"], &[("VAULT_PASSPHRASE", PASSPHRASE)]);
    assert!(!out.status.success());
    let line = one_line_error(&out);
    assert!(line.contains("not initialised") && line.contains("vault-server init"), "{line}");
    assert!(!dir.exists(), "serve must not create the data dir");
}

#[test]
fn init_refuses_an_initialised_dir_and_a_missing_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    assert_eq!(std::fs::metadata(&data.dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(data.db()).unwrap().permissions().mode() & 0o777, 0o600);
    let out = run(&["init", "--data-dir", path_str(&data.dir)], &[("VAULT_PASSPHRASE", PASSPHRASE)]);
    assert!(!out.status.success());
    assert!(one_line_error(&out).contains("already initialised"));
    let out = run(&["init", "--data-dir", path_str(&tmp.path().join("other"))], &[]);
    assert!(!out.status.success());
    assert!(one_line_error(&out).contains("VAULT_PASSPHRASE"));
    // A directory that holds other things (say /var/lib) was made 0700 and given a vault.db.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("notes.txt"), "x").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [&["init", "--data-dir", path_str(&shared)][..], &["serve", "--dev", "--data-dir", path_str(&shared)]] {
        let out = run(args, &[("VAULT_PASSPHRASE", PASSPHRASE)]);
        assert!(!out.status.success(), "{args:?}");
        assert!(one_line_error(&out).contains("not empty") && one_line_error(&out).contains("notes.txt"), "{args:?}");
        assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777, 0o755, "{args:?}");
        let names: Vec<_> = std::fs::read_dir(&shared).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["notes.txt"], "{args:?}");
    }
}

#[test]
fn bad_flags_busy_ports_and_public_plaintext_each_fail_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    let dir = path_str(&data.dir);
    let pf = path_str(&data.passphrase_file);

    let out = run(&["serve", "--data-dir", dir, "--passphrase-file", pf, "--listen", "nonsense"], &[]);
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
    assert!(one_line_error(&out).contains("--listen"));

    let out = run(&["serve", "--data-dir", dir, "--passphrase-file", pf, "--probe-resolve", "imap.sina.com"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("HOST:PORT=ADDR:PORT"));

    // Flags checked after parsing are bad flags too (they exited 1).
    for (args, says) in [
        (&["--log-level", "vault_server=loud", "serve", "--data-dir", dir][..], "--log-level"),
        (&["serve", "--data-dir", dir, "--database", "garbage"], "--database"),
        (&["serve", "--data-dir", dir, "--database", "postgres://h/db"], "--data-dir"),
        (&["token", "list", "--data-dir", dir, "--database-ca-file", "ca.pem"], "--database-ca-file"),
        (&["migrate-store", "--data-dir", dir], "--database"),
    ] {
        let out = run(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(one_line_error(&out).contains(says), "{args:?}");
    }

    // --dev with $VAULT_DATABASE set was told that --data-dir and --database exclude each other.
    let out = run(&["serve", "--dev"], &[("VAULT_DATABASE", "postgres://vault:pw@127.0.0.1:1/vault")]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_line_error(&out);
    assert!(line.contains("--dev keeps its vault in a data dir") && line.contains("VAULT_DATABASE"), "{line}");

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = run(&["serve", "--data-dir", dir, "--passphrase-file", pf, "--listen", &addr], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains(&format!("cannot listen on {addr}")));

    let out = run(&["serve", "--data-dir", dir, "--passphrase-file", pf, "--listen", "0.0.0.0:0"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("--allow-plaintext"));
}

#[test]
fn serve_dev_initialises_once_and_answers_health_and_reflection() {
    let tmp = tempfile::tempdir().unwrap();
    // A bad flag stops it before it creates anything: a vault made by a run that then stopped
    // would never print its admin token.
    let dev_dir = tmp.path().join("vault-dev");
    for bad in [&["--listen", "0.0.0.0:0"][..], &["--listen", "127.0.0.1:0", "--probe-ca-file", "/nonexistent"]] {
        let out = run(&[&["serve", "--dev", "--data-dir", path_str(&dev_dir)][..], bad].concat(), &[]);
        assert!(!out.status.success(), "{bad:?} started");
        assert!(!dev_dir.exists(), "{bad:?} left a dev vault behind");
    }
    // Nor is one made whose admin token would go to /dev/null.
    let out = std::process::Command::new(crate::harness::vault::BIN)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir", path_str(&dev_dir)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success() && one_line_error(&out).contains("nobody would see the token"), "{out:?}");
    assert!(!dev_dir.exists(), "a dev vault was made whose admin token nobody saw");
    let args: Vec<String> = ["serve", "--dev", "--listen", "127.0.0.1:0"].iter().map(|s| (*s).to_owned()).collect();
    let mut server = VaultServer::spawn(&args, Some(tmp.path())).expect("dev server starts");
    let pf = tmp.path().join("vault-dev/passphrase");
    server.wait_for_log("admin token (shown once): avt_");
    let token_lines: Vec<String> =
        server.log().lines().filter(|l| l.starts_with("admin token (shown once): avt_")).map(str::to_owned).collect();
    assert_eq!(token_lines.len(), 1, "{}", server.log());
    assert_eq!(std::fs::metadata(&pf).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(tmp.path().join("vault-dev/vault.db").exists());
    let health = grpcurl::run(&server, &["grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    let list = grpcurl::run(&server, &["list"]);
    assert!(list.contains("vault.v1.AuthCodeVault"), "{list}");
    assert!(server.stop().success());

    // Second start reuses the same vault and passphrase.
    let passphrase = std::fs::read(&pf).unwrap();
    let mut again = VaultServer::spawn(&args, Some(tmp.path())).expect("dev server restarts");
    assert_eq!(std::fs::read(&pf).unwrap(), passphrase);
    assert!(again.stop().success());
    assert!(!again.log().contains("initialised a new vault"));
    assert!(!again.log().contains("avt_"), "the admin token is printed once only");
    assert!(!again.log().contains('\u{1b}'), "colour codes in a log that is not a terminal");
}

#[test]
fn a_second_serve_on_the_same_data_dir_exits_naming_the_owner() {
    let mut stack = crate::harness::Stack::start();
    let (dir, pf) = (path_str(&stack.data.dir).to_owned(), path_str(&stack.data.passphrase_file).to_owned());
    let second = ["serve", "--data-dir", &dir, "--passphrase-file", &pf, "--listen", "127.0.0.1:0"];
    let out = run(&second, &[]);
    assert!(!out.status.success());
    let line = one_line_error(&out);
    assert!(line.contains("in use") && line.contains(&format!("pid {}", stack.server.pid())), "{line}");
    // Deleting the pid file does not let a second server in: the lock is on the data dir.
    std::fs::remove_file(stack.data.dir.join("serve.lock")).unwrap();
    let again = run(&second, &[]);
    assert!(!again.status.success() && one_line_error(&again).contains("in use"), "{again:?}");
    // The lock goes with the process, however it ends: after a kill -9 the next serve starts.
    stack.server.kill_hard();
    // A serve.lock planted as a link is never followed (it could truncate any file).
    let victim = stack.data.dir.parent().unwrap().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let _ = std::fs::remove_file(stack.data.dir.join("serve.lock"));
    std::os::unix::fs::symlink(&victim, stack.data.dir.join("serve.lock")).unwrap();
    let planted = run(&second, &[]);
    assert!(!planted.status.success() && one_line_error(&planted).contains("lock file"), "{planted:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(stack.data.dir.join("serve.lock")).unwrap();
    stack.restart_after_stop();
}

#[test]
fn a_token_that_cannot_be_written_out_is_not_left_valid() {
    use crate::harness::vault::BIN;
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    let create = ["token", "create", "--data-dir", path_str(&data.dir), "--passphrase-file"];
    let create: Vec<&str> = create.iter().copied().chain([path_str(&data.passphrase_file), "--admin"]).collect();
    let list = || {
        let out = run(&["token", "list", "--data-dir", path_str(&data.dir)], &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // `create`, with its stdout (or stderr) a pipe whose reader is gone long before the
    // passphrase is stretched and the token made.
    let closing = |stdout: bool| {
        let mut child = std::process::Command::new(BIN)
            .args(&create)
            .env_remove("VAULT_PASSPHRASE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if stdout {
            drop(child.stdout.take());
        } else {
            drop(child.stderr.take());
        }
        child.wait_with_output().unwrap()
    };
    // A stdout nobody reads: the write fails after the mint, and the token is revoked again.
    let out = closing(true);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = one_line_error(&out);
    assert!(err.contains("cannot write to standard output") && err.contains("revoked again"), "{err}");
    let rows = list();
    assert_eq!(rows.lines().filter(|l| l.starts_with("tk_")).count(), 1, "{rows}");
    assert!(
        rows.lines().filter(|l| l.starts_with("tk_")).all(|l| l.ends_with(" revoked")),
        "a token nobody saw is still valid:\n{rows}"
    );
    // A stderr nobody reads any more: the note before the token failed with a panic (exit 101,
    // the token minted and never shown). The token is shown, and works.
    let out = closing(false);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.trim().starts_with("avt_"), "{shown:?}");
    let rows = list();
    assert_eq!(rows.lines().filter(|l| l.starts_with("tk_") && !l.ends_with(" revoked")).count(), 1, "{rows}");
    // A closed stdout: refused before anything is minted.
    let script = "exec \"$0\" \"$@\" >&-";
    let out = std::process::Command::new("sh").arg("-c").arg(script).arg(BIN).args(&create).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(one_line_error(&out).contains("closed"), "{out:?}");
    // A device that keeps nothing but takes every write.
    let zero = std::fs::OpenOptions::new().write(true).open("/dev/zero").unwrap();
    let out = std::process::Command::new(BIN)
        .args(&create)
        .env_remove("VAULT_PASSPHRASE")
        .stdout(zero)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(list().lines().filter(|l| l.starts_with("tk_")).count(), 2, "a token was minted");
    // A bad --client or token id is a bad flag (2), as README says, not another failure (1).
    let dir = path_str(&data.dir);
    let pf = path_str(&data.passphrase_file);
    let bad_client =
        run(&["token", "create", "--data-dir", dir, "--passphrase-file", pf, "--client", "no spaces"], &[]);
    assert_eq!(bad_client.status.code(), Some(2), "{bad_client:?}");
    let bad_id = run(&["token", "revoke", "--data-dir", dir, "nonsense"], &[]);
    assert_eq!(bad_id.status.code(), Some(2), "{bad_id:?}");
}

/// Makes a data dir's `vault.db` at the given path.
type MakeDb<'a> = dyn Fn(&std::path::Path) + 'a;

/// A data dir `root/name` (mode 0700) whose `vault.db` `make` made: (dir, db).
fn data_dir_with(root: &std::path::Path, name: &str, make: &MakeDb<'_>) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = dir.join("vault.db");
    make(&db);
    (dir, db)
}

#[test]
fn a_vault_db_that_holds_nothing_is_left_alone_by_every_command_and_init_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("VAULT_PASSPHRASE", PASSPHRASE)];
    // What an init cut off leaves: 0 bytes, or the whole schema with no row in it.
    std::fs::create_dir(tmp.path().join("scratch")).unwrap();
    let scratch = DataDir::init(&tmp.path().join("scratch"), PASSPHRASE);
    let sql = |db: &std::path::Path, sql: &str| rusqlite::Connection::open(db).unwrap().execute_batch(sql).unwrap();
    let emptied = |db: &std::path::Path| {
        std::fs::copy(scratch.db(), db).unwrap();
        let tables: Vec<String> = {
            let conn = rusqlite::Connection::open(db).unwrap();
            let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        for t in tables {
            sql(db, &format!("DELETE FROM \"{t}\""));
        }
    };
    let cases: [(&str, &MakeDb<'_>); 2] = [("empty", &|db| std::fs::write(db, b"").unwrap()), ("schema", &emptied)];
    for (name, make) in cases {
        let (dir, _) = data_dir_with(tmp.path(), name, make);
        // Each file's name, length and a hash of its bytes.
        let listing = |d: &std::path::Path| {
            use std::hash::{Hash as _, Hasher as _};
            let mut files: Vec<(String, usize, u64)> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| {
                    let bytes = std::fs::read(&p).unwrap();
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    bytes.hash(&mut h);
                    (p.file_name().unwrap().to_string_lossy().into_owned(), bytes.len(), h.finish())
                })
                .collect();
            files.sort();
            files
        };
        let before = listing(&dir);
        let d = path_str(&dir);
        for args in [
            &["token", "list", "--data-dir", d][..],
            &["token", "create", "--data-dir", d, "--admin"],
            &["token", "revoke", "--data-dir", d, "tk_0123456789ab"],
            &["serve", "--data-dir", d, "--listen", "127.0.0.1:0"],
            &["backup", "--data-dir", d, path_str(&tmp.path().join(format!("{name}.bak")))],
        ] {
            let out = run(args, &env);
            assert!(!out.status.success(), "{name}: {args:?} succeeded");
            let line = one_line_error(&out);
            assert!(line.contains("not initialised") && line.contains("vault-server init"), "{name}: {args:?}: {line}");
            assert_eq!(listing(&dir), before, "{name}: {args:?} changed the data dir");
        }
        // Then init sets it aside (not deleted) and makes a vault that works.
        let out = run(&["init", "--data-dir", d], &env);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let names: Vec<String> = listing(&dir).into_iter().map(|f| f.0).collect();
        assert!(names.iter().any(|n| n.starts_with("vault.db.replaced-")), "{name}: {names:?}");
        let out = run(&["token", "create", "--data-dir", d, "--admin"], &env);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        // A vault with a keyring is never replaced.
        let out = run(&["init", "--data-dir", d], &env);
        assert!(one_line_error(&out).contains("already initialised"), "{name}");
    }

    // Anything else is never taken for nothing: another program's table, the vault's own tables
    // renamed, a link that leads nowhere. Each is refused, and stays as it was.
    let renamed = |db: &std::path::Path| {
        std::fs::copy(scratch.db(), db).unwrap();
        sql(db, "ALTER TABLE keyring RENAME TO keyring_old; ALTER TABLE vault_meta RENAME TO vault_meta_old;");
    };
    let cases: [(&str, &MakeDb<'_>); 3] = [
        ("foreign", &|db| sql(db, "CREATE TABLE secrets (k, v); INSERT INTO secrets VALUES ('a', 'b');")),
        ("renamed", &renamed),
        ("dangling", &|db| std::os::unix::fs::symlink("/nonexistent/vault.db", db).unwrap()),
    ];
    for (name, make) in cases {
        let (dir, db) = data_dir_with(tmp.path(), name, make);
        let before = std::fs::symlink_metadata(&db).map(|m| (m.len(), m.file_type().is_symlink())).unwrap();
        let bytes = std::fs::read(&db).ok();
        let out = run(&["init", "--data-dir", path_str(&dir)], &env);
        assert!(!out.status.success(), "{name}: init replaced it");
        assert!(one_line_error(&out).contains("already initialised"), "{name}");
        assert_eq!(
            std::fs::symlink_metadata(&db).map(|m| (m.len(), m.file_type().is_symlink())).unwrap(),
            before,
            "{name}"
        );
        assert_eq!(std::fs::read(&db).ok(), bytes, "{name}");
    }
}

/// A temp dir holding a vault's backup, `good.bak` (and the vault, in the dir).
fn a_good_backup() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    let good = tmp.path().join("good.bak");
    let out = run(&["backup", "--data-dir", path_str(&data.dir), path_str(&good)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (tmp, good)
}

#[test]
fn a_backup_killed_midway_leaves_no_file_under_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    // About 60 MB of audit trail, so the copy takes a while.
    let db = rusqlite::Connection::open(data.dir.join("vault.db")).unwrap();
    db.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000) \
         INSERT INTO audit_events (at, caller, caller_role, rpc, mailbox, client, outcome, count, first_at, reason) \
         SELECT i, 'tk_0', 'admin', 'Revoke', 'a@sina.com', 'x', 'OK', 1, i, hex(randomblob(1000)) FROM n; \
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    drop(db);
    let target = tmp.path().join("nightly.bak");
    let mut child = std::process::Command::new(crate::harness::vault::BIN)
        .args(["backup", "--data-dir", path_str(&data.dir), path_str(&target)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once its copy is under way (a file beside the target, or the target, appeared).
    let partial = |dir: &std::path::Path| {
        std::fs::read_dir(dir).unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains("nightly.bak"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !partial(tmp.path()) && child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the backup finished before it could be killed; make the vault bigger");
    assert!(
        !target.exists(),
        "a killed backup left a file under its name ({} bytes)",
        target.metadata().unwrap().len()
    );
    // Run again, it writes the whole copy, and restore takes it.
    let out = run(&["backup", "--data-dir", path_str(&data.dir), path_str(&target)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = tmp.path().join("restored");
    let out = run(&["restore", "--data-dir", path_str(&restored), path_str(&target)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // And a second backup under the same name is refused, the first one kept.
    let out = run(&["backup", "--data-dir", path_str(&data.dir), path_str(&target)], &[]);
    assert!(!out.status.success() && one_line_error(&out).contains("exists"), "{out:?}");
}

#[test]
fn a_restore_that_fails_leaves_nothing_behind_and_a_retry_works() {
    let (tmp, good) = a_good_backup();
    let (empty, garbage) = (tmp.path().join("empty.bak"), tmp.path().join("garbage.bak"));
    std::fs::write(&empty, b"").unwrap();
    std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
    // A copy of a live vault.db, its latest change still in the WAL beside it (the writer is
    // open): restoring the file alone dropped that change. So did a vault.db copied without its
    // -wal.
    let live = tmp.path().join("live.db");
    std::fs::copy(&good, &live).unwrap();
    let writer = rusqlite::Connection::open(&live).unwrap();
    writer.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE latest (change);").unwrap();
    assert!(std::fs::metadata(tmp.path().join("live.db-wal")).unwrap().len() > 0);
    let copied = tmp.path().join("copied.db");
    std::fs::copy(tmp.path().join("data/vault.db"), &copied).unwrap();
    let target = tmp.path().join("restored");
    for (bad, says) in [
        (&empty, "holds no vault"),
        (&garbage, "restore"),
        (&tmp.path().join("missing.bak"), "cannot read"),
        (&live, "vault-server backup"),
        (&copied, "vault-server backup"),
    ] {
        let out = run(&["restore", "--data-dir", path_str(&target), path_str(bad)], &[]);
        assert!(!out.status.success(), "{bad:?} was restored");
        let line = one_line_error(&out);
        assert!(line.contains(says), "{bad:?}: {line}");
        assert!(!target.exists(), "{bad:?} left {target:?} behind");
    }
    drop(writer);
    let out = run(&["restore", "--data-dir", path_str(&target), path_str(&good)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["token", "list", "--data-dir", path_str(&target)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `vault-server args`, with `stdin`, failing the test (not hanging it) if it runs past 30 s.
fn run_within_30s(args: &[&str], stdin: std::process::Stdio) -> std::process::Output {
    let mut child = std::process::Command::new(crate::harness::vault::BIN)
        .args(args)
        .env_remove("VAULT_PASSPHRASE")
        .stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("vault-server {args:?} still ran after 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_restore_reads_a_file_or_a_pipe_never_a_device_and_gives_back_the_dir_it_was_given() {
    let (tmp, good) = a_good_backup();
    // An empty dir given (0755): a failed restore leaves it as it was.
    let target = tmp.path().join("given");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    // /dev/zero never ended (the disk filled); a named pipe nobody writes to waited for ever.
    let fifo = tmp.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for (bad, says) in [(std::path::Path::new("/dev/zero"), "not a regular file or a pipe"), (&fifo, "holds no vault")]
    {
        let out =
            run_within_30s(&["restore", "--data-dir", path_str(&target), path_str(bad)], std::process::Stdio::null());
        assert!(!out.status.success(), "{bad:?} was restored");
        let line = one_line_error(&out);
        assert!(line.contains(says), "{bad:?}: {line}");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{bad:?} left the dir's mode at {mode:o}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "{bad:?} left files behind");
    }
    // An endless pipe of something else is refused at its first bytes (it filled the disk).
    let mut yes = std::process::Command::new("yes").stdout(std::process::Stdio::piped()).spawn().unwrap();
    let endless = std::process::Stdio::from(yes.stdout.take().unwrap());
    let out = run_within_30s(&["restore", "--data-dir", path_str(&target), "/dev/stdin"], endless);
    let _ = yes.kill();
    let _ = yes.wait();
    assert!(one_line_error(&out).contains("not an SQLite database"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    // A database that is no vault, restored where parents are missing: none of them is left.
    let foreign = tmp.path().join("foreign.bak");
    rusqlite::Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE secrets (k, v);").unwrap();
    let nested = tmp.path().join("new/deeper/vault");
    let out =
        run_within_30s(&["restore", "--data-dir", path_str(&nested), path_str(&foreign)], std::process::Stdio::null());
    assert!(!out.status.success(), "a foreign database was restored");
    assert!(!tmp.path().join("new").exists(), "{}", String::from_utf8_lossy(&out.stderr));
    // A pipe that carries a backup is restored (zcat vault.bak.gz | ... restore /dev/stdin).
    let mut feeder = std::process::Command::new("cat").arg(&good).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let piped = std::process::Stdio::from(feeder.stdout.take().unwrap());
    let out = run_within_30s(&["restore", "--data-dir", path_str(&target), "/dev/stdin"], piped);
    assert!(feeder.wait().unwrap().success());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["token", "list", "--data-dir", path_str(&target)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

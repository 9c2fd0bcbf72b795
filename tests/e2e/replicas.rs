//! Two replicas of the real binary on one PostgreSQL database (a throwaway cluster), probing a
//! real Dovecot: what one replica changes, the other honours within a second; a pair's change
//! runs on one replica at a time; the probe budget is one for all.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::harness::dovecot::Dovecot;
use crate::harness::pki::TestPki;
use crate::harness::vault::{VaultServer, path_str, run};
use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, PASSPHRASE, Stack, pg};

struct Replicas {
    _tmp: tempfile::TempDir,
    pki: TestPki,
    passphrase_file: std::path::PathBuf,
    dovecot: Dovecot,
    url: String,
    a: VaultServer,
    b: VaultServer,
    admin: String,
    sender: String,
    sender_id: String,
}

impl Replicas {
    async fn start(burst: &str) -> Self {
        let tmp = tempfile::Builder::new().prefix("vault-replicas").tempdir().unwrap();
        let pki = TestPki::generate(tmp.path(), &["imap.sina.com", "smtp.sina.com"]);
        let dovecot = Dovecot::start(tmp.path(), &pki, &[(ALICE, ALICE_CODE), (BOB, BOB_CODE)]);
        let url = pg::fresh_database().await;
        let passphrase_file = tmp.path().join("passphrase");
        std::fs::write(&passphrase_file, PASSPHRASE).unwrap();
        std::fs::set_permissions(&passphrase_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let pf = path_str(&passphrase_file).to_owned();
        let out = run(&["init", "--database", &url, "--passphrase-file", &pf], &[]);
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let mint = |role: &[&str]| {
            let mut args = vec!["token", "create", "--database", &url, "--passphrase-file", &pf];
            args.extend_from_slice(role);
            let out = run(&args, &[]);
            assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let (admin, sender) = (mint(&["--admin"]), mint(&["--client", "sender"]));
        let listed = run(&["token", "list", "--database", &url], &[]);
        assert!(listed.status.success(), "token list: {}", String::from_utf8_lossy(&listed.stderr));
        let listed = String::from_utf8(listed.stdout).unwrap();
        let sender_id = listed.lines().find(|l| l.contains("client:sender")).and_then(|l| l.split_whitespace().next());
        let sender_id = sender_id.unwrap_or_else(|| panic!("no sender token in:\n{listed}")).to_owned();
        let a = Self::replica(&url, &passphrase_file, &pki, &dovecot, burst);
        let b = Self::replica(&url, &passphrase_file, &pki, &dovecot, burst);
        Self { _tmp: tmp, pki, passphrase_file, dovecot, url, a, b, admin, sender, sender_id }
    }

    fn replica(url: &str, pf: &std::path::Path, pki: &TestPki, dovecot: &Dovecot, burst: &str) -> VaultServer {
        Self::replica_with(url, pf, pki, dovecot, &["--probe-burst", burst])
    }

    /// A replica with `extra` flags.
    fn replica_with(url: &str, pf: &std::path::Path, pki: &TestPki, dovecot: &Dovecot, extra: &[&str]) -> VaultServer {
        let mut args: Vec<String> = ["serve", "--database", url, "--passphrase-file", path_str(pf)]
            .into_iter()
            .chain(["--listen", "127.0.0.1:0"])
            .chain(extra.iter().copied())
            .map(String::from)
            .collect();
        args.extend(Stack::probe_args(pki, dovecot));
        VaultServer::spawn(&args, None).unwrap_or_else(|log| panic!("replica did not start:\n{log}"))
    }

    /// Runs SQL on the test database as its owner.
    async fn sql(&self, statement: &str) {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(connection);
        client.batch_execute(statement).await.unwrap();
        drop(client);
        let _ = task.await;
    }
}

fn code(s: &str) -> SecretString {
    SecretString::from(s)
}

/// Reveals on `server` until it is refused; how long that took.
async fn refused_after(server: &VaultServer, token: &str, mailbox: &str) -> Duration {
    let started = Instant::now();
    let mut c = server.client_with(Some(token)).await;
    loop {
        match c.reveal(mailbox, "sender").await {
            Ok(_) => assert!(started.elapsed() < Duration::from_secs(5), "still revealed after 5 s"),
            Err(vault_client::Error::Revoked) => return started.elapsed(),
            // Right after its connections were killed, a call may find one dead: not served.
            Err(vault_client::Error::VaultUnavailable { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_bind_on_one_replica_reveals_on_the_other_and_a_revoke_there_is_honoured_within_a_second() {
    let r = Replicas::start("100").await;
    let mut a = r.a.client_with(Some(&r.admin)).await;
    a.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    a.bind(BOB, "sender", code(BOB_CODE)).await.unwrap();
    let mut b = r.b.client_with(Some(&r.sender)).await;
    // A row is cached on its second miss: the third read is served from B's row cache.
    for _ in 0..3 {
        assert_eq!(b.reveal(ALICE, "sender").await.unwrap().code.expose_secret(), ALICE_CODE);
        assert_eq!(b.reveal(BOB, "sender").await.unwrap().code.expose_secret(), BOB_CODE);
    }
    a.revoke(ALICE, "sender", "laptop stolen").await.unwrap();
    let took = refused_after(&r.b, &r.sender, ALICE).await;
    assert!(took < Duration::from_secs(1), "B revealed a revoked code for {took:?}");

    // B loses every connection to the database (its change-log reader among them): still
    // within a second.
    let pid = r.b.pid();
    r.sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'vault-server/{pid}'"
    ))
    .await;
    a.revoke(BOB, "sender", "laptop stolen").await.unwrap();
    let took = refused_after(&r.b, &r.sender, BOB).await;
    assert!(took < Duration::from_secs(1), "B revealed a revoked code for {took:?}");
    // And B serves again once it reconnected: the new binding within a second too.
    a.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    let started = Instant::now();
    loop {
        match b.reveal(ALICE, "sender").await {
            Ok(revealed) => break assert_eq!(revealed.code.expose_secret(), ALICE_CODE),
            Err(vault_client::Error::Revoked | vault_client::Error::VaultUnavailable { .. }) => {
                assert!(started.elapsed() < Duration::from_secs(1), "still revoked")
            }
            Err(e) => panic!("unexpected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A token revoked by the CLI against the database is refused by every replica within a
    // second.
    let out = run(&["token", "revoke", "--database", &r.url, &r.sender_id], &[]);
    assert!(out.status.success(), "token revoke: {}", String::from_utf8_lossy(&out.stderr));
    let started = Instant::now();
    loop {
        match b.reveal(ALICE, "sender").await {
            Ok(_) => assert!(started.elapsed() < Duration::from_secs(1), "a revoked token still served"),
            Err(vault_client::Error::Unauthenticated { .. }) => break,
            Err(e) => panic!("unexpected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!r.a.log().contains(ALICE_CODE) && !r.b.log().contains(ALICE_CODE));
    assert!(!r.a.log().contains(&r.url) && !r.b.log().contains(&r.url), "a log line holds the database URL");
}

/// Reveals `mailbox` on `server` until it answers the code; how long that took.
async fn revealed_after(server: &VaultServer, token: &str, mailbox: &str, want: &str) -> Duration {
    let started = Instant::now();
    let mut c = server.client_with(Some(token)).await;
    loop {
        match c.reveal(mailbox, "sender").await {
            Ok(r) if r.code.expose_secret() == want => return started.elapsed(),
            Ok(_) => {}
            Err(vault_client::Error::VaultUnavailable { .. } | vault_client::Error::Revoked) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "not the new code after 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 3 s for `server`'s log to hold `line`.
async fn logged(server: &VaultServer, line: &str) {
    let started = Instant::now();
    while !server.log().contains(line) {
        assert!(started.elapsed() < Duration::from_secs(3), "the log never said {line:?}:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_change_log_trigger_switched_off_by_hand_never_lets_a_replica_serve_a_revoked_code() {
    let r = Replicas::start("100").await;
    let mut a = r.a.client_with(Some(&r.admin)).await;
    a.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    a.bind(BOB, "sender", code(BOB_CODE)).await.unwrap();
    let mut b = r.b.client_with(Some(&r.sender)).await;
    let cache_both = async |b: &mut vault_client::VaultClient| {
        for _ in 0..3 {
            assert_eq!(b.reveal(ALICE, "sender").await.unwrap().code.expose_secret(), ALICE_CODE);
            assert_eq!(b.reveal(BOB, "sender").await.unwrap().code.expose_secret(), BOB_CODE);
        }
    };
    cache_both(&mut b).await;

    // Revoked by hand with the trigger off, on again in the same transaction: no log row, and no
    // read ever sees the trigger off. B drops its whole cache on seeing the trigger rewritten.
    r.sql(&format!(
        "BEGIN; ALTER TABLE credentials DISABLE TRIGGER credentials_update; \
         UPDATE credentials SET state = 2, key_id = NULL, nonce = NULL, ciphertext = NULL, revoked_at = 0 \
         WHERE mailbox = '{ALICE}'; \
         ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_update; COMMIT"
    ))
    .await;
    let took = refused_after(&r.b, &r.sender, ALICE).await;
    assert!(took < Duration::from_secs(1), "B revealed a code revoked by hand for {took:?}");

    // Left disabled (a bulk load's habit): A's Revoke writes no change-log row; B stops
    // trusting its cache instead, serves from the database, and says why.
    r.sql("ALTER TABLE credentials DISABLE TRIGGER credentials_update").await;
    a.revoke(BOB, "sender", "laptop stolen").await.unwrap();
    let took = refused_after(&r.b, &r.sender, BOB).await;
    assert!(took < Duration::from_secs(1), "B revealed a revoked code for {took:?}");
    let said = "trigger credentials_update on credentials is disabled (ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_update)";
    logged(&r.b, said).await;
    a.bind(BOB, "sender", code(BOB_CODE)).await.unwrap();
    let took = revealed_after(&r.b, &r.sender, BOB, BOB_CODE).await;
    assert!(took < Duration::from_secs(1), "B refused a new binding for {took:?}");

    // A replica started meanwhile refuses, saying how to repair it; repaired so, it starts.
    // The token commands still work: a token revoke must never wait on the change log.
    let pf = r._tmp.path().join("passphrase");
    let serve: Vec<String> =
        ["serve", "--database", &r.url, "--passphrase-file", path_str(&pf), "--listen", "127.0.0.1:0"]
            .into_iter()
            .map(String::from)
            .collect();
    let refused = VaultServer::spawn(&serve, None).err().expect("a replica started with the change log off");
    assert!(refused.contains(said), "{refused}");
    let listed = run(&["token", "list", "--database", &r.url], &[]);
    assert!(listed.status.success(), "token list: {}", String::from_utf8_lossy(&listed.stderr));
    r.sql("ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_update").await;
    drop(VaultServer::spawn(&serve, None).unwrap_or_else(|log| panic!("did not start once repaired:\n{log}")));
    logged(&r.b, "the change log is read again; the row cache serves again").await;

    // Sessions in replica mode (a DBA's way round foreign keys, and what replication tools
    // set): the vault's triggers fire always, so B's cache keeps hearing of changes.
    a.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    let took = revealed_after(&r.b, &r.sender, ALICE, ALICE_CODE).await;
    assert!(took < Duration::from_secs(1), "B refused a new binding for {took:?}");
    let db = r.url.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    r.sql(&format!(
        "ALTER DATABASE {db} SET session_replication_role = replica; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name LIKE 'vault-server/%'"
    ))
    .await;
    // Their connections were cut: the first calls may meet a dead one.
    revealed_after(&r.b, &r.sender, BOB, BOB_CODE).await;
    cache_both(&mut b).await;
    let mut tries = 0;
    while let Err(e) = a.revoke(BOB, "sender", "laptop stolen").await {
        assert!(matches!(e, vault_client::Error::VaultUnavailable { .. }) && tries < 50, "revoke: {e}");
        tries += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = refused_after(&r.b, &r.sender, BOB).await;
    assert!(took < Duration::from_secs(1), "B revealed a revoked code for {took:?}");
    assert!(!r.b.log().contains("fires only in some sessions"), "{}", r.b.log());

    // Recreated to fire on nothing (WHEN (false)) and enabled as before: not its migration's
    // trigger, so B stops trusting its cache.
    for _ in 0..3 {
        assert_eq!(b.reveal(ALICE, "sender").await.unwrap().code.expose_secret(), ALICE_CODE);
    }
    r.sql(
        "BEGIN; DROP TRIGGER credentials_update ON credentials; \
         CREATE TRIGGER credentials_update AFTER UPDATE ON credentials FOR EACH ROW WHEN (false) \
         EXECUTE FUNCTION vault_note_change(); \
         ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_update; COMMIT",
    )
    .await;
    a.revoke(ALICE, "sender", "laptop stolen").await.unwrap();
    let took = refused_after(&r.b, &r.sender, ALICE).await;
    assert!(took < Duration::from_secs(1), "B revealed a revoked code for {took:?}");
    logged(&r.b, "trigger credentials_update on credentials is not the one its migration made").await;

    // Someone else's trigger on a vault table (it could copy what the vault destroys): refused
    // at start, with how to remove it.
    r.sql(
        "CREATE TABLE loot (c bytea); \
         CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO loot VALUES (OLD.ciphertext); RETURN NULL; END $$; \
         CREATE TRIGGER keep AFTER UPDATE ON credentials FOR EACH ROW EXECUTE FUNCTION keep()",
    )
    .await;
    let refused = VaultServer::spawn(&serve, None).err().expect("a replica started beside a foreign trigger");
    assert!(
        refused
            .contains(r#"trigger "keep" on "credentials" is not the vault's (DROP TRIGGER "keep" ON "credentials")"#),
        "{refused}"
    );
}

#[tokio::test]
async fn two_binds_of_one_pair_on_two_replicas_give_one_ok_one_already_exists_and_one_login() {
    let r = Replicas::start("100").await;
    let mut a = r.a.client_with(Some(&r.admin)).await;
    let mut b = r.b.client_with(Some(&r.admin)).await;
    let (x, y) = tokio::join!(a.bind(ALICE, "sender", code(ALICE_CODE)), b.bind(ALICE, "sender", code(ALICE_CODE)));
    let outcomes = [x.is_ok(), y.is_ok()];
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{x:?} {y:?}");
    let refused = if x.is_ok() { y } else { x };
    assert!(matches!(refused, Err(vault_client::Error::AlreadyBound)), "{refused:?}");
    assert_eq!(r.dovecot.login_times(ALICE).len(), 1, "the waiting replica probed too:\n{}", r.dovecot.log());
}

// Multi-threaded: a replica is started while the test runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_budget_is_one_for_all_replicas() {
    // Burst 3, full again after the Bind (its bucket dropped): of four Verifies spread over both
    // replicas, three run and one is refused. Per-replica buckets would run all four.
    let r = Replicas::start("3").await;
    let mut a = r.a.client_with(Some(&r.admin)).await;
    let mut b = r.b.client_with(Some(&r.admin)).await;
    a.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    r.sql("DELETE FROM probe_budget").await;
    let mut codes = Vec::new();
    for i in 0..4 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        codes.push(
            match c
                .raw()
                .verify(vault_client::proto::VerifyRequest { mailbox: ALICE.into(), client: "sender".into() })
                .await
            {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            },
        );
    }
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::Ok, Code::ResourceExhausted]);
    // A data-key rotation would leave the other replica without the new key: refused.
    let refused = a.raw().rotate_data_key(vault_client::proto::RotateDataKeyRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(r.dovecot.login_times(ALICE).len(), 4, "one Bind and three Verifies reached the provider");

    // Shared probe slots that cannot be read are the database's fault, not the provider's: it
    // was answered PROBE_UNREACHABLE ("check DNS and firewalls"), counted as a probe outcome.
    r.sql("DELETE FROM probe_budget; ALTER TABLE host_slots RENAME TO host_slots_away").await;
    let verify = vault_client::proto::VerifyRequest { mailbox: ALICE.into(), client: "sender".into() };
    let status = a.raw().verify(verify).await.unwrap_err();
    let reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_default();
    assert!(!reason.starts_with("PROBE_") && !status.message().contains("reach"), "{status:?}");
    r.sql("ALTER TABLE host_slots_away RENAME TO host_slots").await;
    assert_eq!(r.dovecot.login_times(ALICE).len(), 4, "no login was tried");

    // Every slot to the host held (by a replica that died mid-probe): the probe times out
    // waiting for one, and says so (it said the server did not answer).
    r.sql(
        "DELETE FROM probe_budget; INSERT INTO host_slots (host, slot, holder, expires_at) SELECT 'imap.sina.com', s, \
         'dead', (extract(epoch FROM now()) * 1000)::bigint + 600000 FROM generate_series(0, 3) AS s",
    )
    .await;
    let c = tokio::task::block_in_place(|| {
        Replicas::replica_with(&r.url, &r.passphrase_file, &r.pki, &r.dovecot, &["--probe-timeout", "1"])
    });
    let verify = vault_client::proto::VerifyRequest { mailbox: ALICE.into(), client: "sender".into() };
    let probe = c.client_with(Some(&r.admin)).await.raw().verify(verify).await.unwrap().into_inner().probe.unwrap();
    assert_eq!(probe.outcome(), vault_client::proto::ProbeOutcome::TimedOut);
    assert!(probe.server_response.starts_with("no free probe slot to imap.sina.com"), "{probe:?}");
    assert!(probe.hint.contains("--probe-host-concurrency"), "{probe:?}");
}

#[tokio::test]
async fn a_replica_killed_during_reveal_load_fails_no_reveal_of_a_client_given_both() {
    let mut r = Replicas::start("100").await;
    let mut admin = r.a.client_with(Some(&r.admin)).await;
    admin.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    let options = vault_client::ConnectOptions::with_token(SecretString::from(r.sender.clone()));
    let client = vault_client::VaultClient::connect_many([r.a.endpoint(), r.b.endpoint()], options).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (mut client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut done = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let revealed =
                        client.reveal(ALICE, "sender").await.unwrap_or_else(|e| panic!("a Reveal failed: {e}"));
                    assert_eq!(revealed.code.expose_secret(), ALICE_CODE);
                    done += 1;
                }
                done
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    r.a.kill_hard();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert!(total > 100, "only {total} Reveals in 2 s");
}

#[tokio::test]
async fn a_data_dir_moved_into_postgres_serves_its_codes_tokens_and_audit_trail() {
    let mut stack = Stack::start();
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    admin.bind(BOB, "sender", code(BOB_CODE)).await.unwrap();
    admin.revoke(BOB, "sender", "laptop stolen").await.unwrap();
    let sender = stack.client_token("sender");
    let (dir, pf) = (path_str(&stack.data.dir).to_owned(), path_str(&stack.data.passphrase_file).to_owned());
    let migrate = |url: &str, pf: &str| {
        run(&["migrate-store", "--data-dir", &dir, "--database", url, "--passphrase-file", pf], &[])
    };
    let url = pg::fresh_database().await;

    let busy = migrate(&url, &pf);
    assert!(!busy.status.success() && String::from_utf8_lossy(&busy.stderr).contains("in use"), "{busy:?}");
    assert!(stack.server.stop().success());
    let wrong = stack.data.dir.parent().unwrap().join("wrong");
    std::fs::write(&wrong, "not the passphrase at all").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let refused = migrate(&url, path_str(&wrong));
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("wrong passphrase"));
    // A database that cannot be reached: refused before the data dir is changed.
    let before = std::fs::read(stack.data.db()).unwrap();
    let unreachable = migrate("postgres://vault:pw@127.0.0.1:1/vault", &pf);
    assert!(!unreachable.status.success() && String::from_utf8_lossy(&unreachable.stderr).contains("PostgreSQL"));
    assert!(std::fs::read(stack.data.db()).unwrap() == before, "the data dir was changed");

    let out = migrate(&url, &pf);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("moved 1 active and 1 revoked bindings, 2 tokens"), "{stdout}");
    let again = migrate(&url, &pf);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a vault"), "{again:?}");

    let replica = Replicas::replica(&url, &stack.data.passphrase_file, &stack.pki, &stack.dovecot, "100");
    let mut client = replica.client_with(Some(&sender)).await;
    assert_eq!(client.reveal(ALICE, "sender").await.unwrap().code.expose_secret(), ALICE_CODE);
    assert!(matches!(client.reveal(BOB, "sender").await, Err(vault_client::Error::Revoked)));
    let mut admin = replica.client_with(Some(&stack.admin_token)).await;
    let trail = admin.audit_all(&vault_client::AuditFilter::default(), usize::MAX).await.unwrap();
    let rpcs: Vec<&str> = trail.iter().map(|e| e.rpc.as_str()).collect();
    assert_eq!(rpcs.iter().filter(|r| **r == "Bind").count(), 2, "{rpcs:?}");
    let revoke_at = rpcs.iter().position(|r| *r == "Revoke").unwrap();
    let last_bind_at = rpcs.iter().rposition(|r| *r == "Bind").unwrap();
    assert!(revoke_at < last_bind_at, "newest first, as in the data dir: {rpcs:?}");
}

#[tokio::test]
async fn a_row_a_serving_vault_would_refuse_is_never_moved_as_if_it_opened() {
    let mut stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    assert!(stack.server.stop().success());
    // Stripped of its generation, the row opens in no format a serving vault accepts; migrate-store
    // used to move it and report that every active code opens there.
    let db = rusqlite::Connection::open(stack.data.db()).unwrap();
    db.execute("UPDATE credentials SET generation = NULL WHERE mailbox = ?1", [ALICE]).unwrap();
    drop(db);
    let url = pg::fresh_database().await;
    let (dir, pf) = (path_str(&stack.data.dir), path_str(&stack.data.passphrase_file));
    let out = run(&["migrate-store", "--data-dir", dir, "--database", &url, "--passphrase-file", pf], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(ALICE) && stderr.contains("nothing was copied"), "{out:?}");
    // Nothing was copied: the database takes a fresh vault.
    let out = run(&["init", "--database", &url, "--passphrase-file", pf], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_replica_that_stops_answering_is_passed_over_by_a_client_with_a_timeout() {
    let stack = Stack::start();
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    // A replica whose host stopped answering: connections are accepted and never served.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hole.incoming() {
            held.push(conn);
        }
    });
    let options = vault_client::ConnectOptions {
        token: Some(SecretString::from(stack.client_token("sender"))),
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let client =
        vault_client::VaultClient::connect_many([format!("http://{hole_addr}"), stack.server.endpoint()], options);
    let mut client = tokio::time::timeout(Duration::from_secs(10), client).await.expect("connect_many hung").unwrap();
    let started = Instant::now();
    for _ in 0..6 {
        assert_eq!(client.reveal(ALICE, "sender").await.unwrap().code.expose_secret(), ALICE_CODE);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?} for 6 Reveals", started.elapsed());
}

/// How the armed COMMIT is lost to the client.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    /// It reaches the database, which commits; the answer never comes back.
    AnswerLost,
    /// The connection is cut first; the COMMIT reaches the database this much later, so until
    /// then the transaction is in progress.
    Late(Duration),
    /// It never reaches the database, which aborts the transaction.
    Never,
    /// As `AnswerLost`, then the database cannot be reached through the proxy for this long
    /// (every connection cut, new ones closed).
    Outage(Duration),
}

/// A TCP proxy in front of PostgreSQL that, once armed, cuts the first connection whose traffic
/// since arming holds the marker it was armed with, at that connection's next COMMIT.
struct CommitCutter {
    addr: std::net::SocketAddr,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The marker and the cut, and how many times the cutter was armed (a marker seen before
    /// the latest arming does not count).
    marker: std::sync::Arc<std::sync::Mutex<(usize, &'static [u8], Cut)>>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CommitCutter {
    async fn start(upstream: String) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (armed, cuts) = (std::sync::Arc::new(AtomicBool::new(false)), std::sync::Arc::new(AtomicUsize::new(0)));
        let marker: std::sync::Arc<std::sync::Mutex<(usize, &'static [u8], Cut)>> =
            std::sync::Arc::new(std::sync::Mutex::new((0, b"", Cut::AnswerLost)));
        // Bumped when an outage starts (every pump ends); new connections are closed while set.
        let o = std::sync::Arc::new(tokio::sync::watch::channel((0, false)).0);
        let (a, c, m) = (armed.clone(), cuts.clone(), marker.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if o.borrow().1 {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                tokio::spawn(Self::pump(client, server, a.clone(), c.clone(), m.clone(), o.clone()));
            }
        });
        Self { addr, armed, marker, cuts }
    }

    /// Loses, as `cut` says, the next COMMIT of a connection that sends `marker` from now on.
    fn arm(&self, marker: &'static [u8], cut: Cut) {
        let mut current = self.marker.lock().unwrap();
        *current = (current.0 + 1, marker, cut);
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn pump(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
        cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        marker: std::sync::Arc<std::sync::Mutex<(usize, &'static [u8], Cut)>>,
        outage: std::sync::Arc<tokio::sync::watch::Sender<(u64, bool)>>,
    ) {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let holds = |chunk: &[u8], what: &[u8]| chunk.windows(what.len()).any(|w| w == what);
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        let mut outages = outage.subscribe();
        // Set once the COMMIT to lose is taken: what the database answers is dropped.
        let hold = std::sync::Arc::new(AtomicBool::new(false));
        let held = hold.clone();
        let back = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                if !held.load(SeqCst) && to_client.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        // The arming under which this connection sent the marker.
        let mut seen = None;
        let mut lost = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::select! {
                read = from_client.read(&mut buf) => match read {
                    Ok(n @ 1..) => n,
                    _ => break,
                },
                _ = outages.changed() => break,
            };
            let chunk = &buf[..n];
            if armed.load(SeqCst) {
                let (arming, wanted, cut) = *marker.lock().unwrap();
                if holds(chunk, wanted) {
                    seen = Some(arming);
                }
                if seen == Some(arming) && holds(chunk, b"COMMIT") && armed.swap(false, SeqCst) {
                    hold.store(true, SeqCst);
                    lost = Some((cut, chunk.to_vec()));
                    break;
                }
            }
            if to_server.write_all(chunk).await.is_err() {
                break;
            }
        }
        let Some((cut, commit)) = lost else {
            back.abort();
            return;
        };
        if matches!(cut, Cut::AnswerLost | Cut::Outage(_)) {
            // The database commits and answers; the answer is dropped.
            let _ = to_server.write_all(&commit).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The client's side is cut.
        back.abort();
        let _ = back.await;
        drop(from_client);
        cuts.fetch_add(1, SeqCst);
        match cut {
            Cut::Late(after) => {
                tokio::time::sleep(after).await;
                let _ = to_server.write_all(&commit).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Cut::Outage(lasting) => {
                outage.send_modify(|(n, down)| (*n, *down) = (*n + 1, true));
                tokio::time::sleep(lasting).await;
                outage.send_modify(|(_, down)| *down = false);
            }
            Cut::AnswerLost | Cut::Never => {}
        }
    }

    /// `url` with its host and port replaced by this proxy's.
    fn url(&self, url: &str) -> String {
        let (head, rest) = url.split_once('@').unwrap();
        let (_, path) = rest.split_once('/').unwrap();
        format!("{head}@{}/{path}", self.addr)
    }
}

// Multi-threaded: the proxy serves the replica while the test waits for it to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_never_reported_as_not_made_and_the_client_learns_it_was() {
    let r = Replicas::start("100").await;
    let upstream = r.url.split_once('@').unwrap().1.split_once('/').unwrap().0.to_owned();
    let cutter = CommitCutter::start(upstream).await;
    let url = cutter.url(&r.url);
    let c = tokio::task::block_in_place(|| Replicas::replica(&url, &r.passphrase_file, &r.pki, &r.dovecot, "100"));
    let mut admin = c.client_with(Some(&r.admin)).await;
    admin.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();

    // The replica asks whether its COMMIT was made, and answers what was made: one rotation
    // (vault-client's resend with the request id is for when it cannot tell, below; its rule
    // has unit tests in vault-client's retry.rs). The marker is in the Rotate's UPDATE only.
    cutter.arm(b"SET version", Cut::AnswerLost);
    let rotated = admin.rotate(ALICE, "sender", code(ALICE_CODE), 0).await.unwrap();
    assert_eq!(cutter.cuts(), 1, "no COMMIT was cut");
    assert_eq!(rotated.credential.version, 2);
    assert_eq!(admin.get(ALICE, "sender").await.unwrap().version, 2, "rotated twice");

    // Without a request id the replica asks the database whether its COMMIT was made, and
    // answers as if the COMMIT had answered.
    let rotate = vault_client::proto::RotateRequest {
        mailbox: ALICE.into(),
        client: "sender".into(),
        new_auth_code: ALICE_CODE.into(),
        ..Default::default()
    };
    cutter.arm(b"SET version", Cut::AnswerLost);
    let answered = admin.raw().rotate(rotate.clone()).await.expect("a COMMIT made is answered as made");
    assert_eq!(cutter.cuts(), 2, "no COMMIT was cut");
    assert_eq!(answered.into_inner().credential.unwrap().version, 3);
    // When it cannot tell (the COMMIT reaches the database only after its 5 s of asking):
    // UNAVAILABLE, saying the change may have been made (it was), not "nothing was changed".
    cutter.arm(b"SET version", Cut::Late(Duration::from_secs(7)));
    let status = admin.raw().rotate(rotate).await.unwrap_err();
    assert_eq!(cutter.cuts(), 3, "no COMMIT was cut");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("may have been made"), "{}", status.message());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(admin.get(ALICE, "sender").await.unwrap().version, 4);

    // The token commands: a token whose COMMIT went unanswered is printed, and made once.
    let pf = path_str(&r.passphrase_file).to_owned();
    cutter.arm(b"INSERT INTO tokens", Cut::AnswerLost);
    let out = tokio::task::block_in_place(|| {
        run(&["token", "create", "--database", &url, "--passphrase-file", &pf, "--client", "late"], &[])
    });
    assert_eq!(cutter.cuts(), 4, "no COMMIT was cut");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut late = c.client_with(Some(&minted)).await;
    assert!(matches!(late.reveal(ALICE, "late").await, Err(vault_client::Error::NotFound)), "token refused");
    let list =
        tokio::task::block_in_place(|| run(&["token", "list", "--database", &url, "--passphrase-file", &pf], &[]));
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert_eq!(list.lines().filter(|l| l.contains("client:late")).count(), 1, "{list}");

    // A usage flush whose COMMIT is lost (the audit listing flushes first): its Reveals are
    // counted once, whether the COMMIT was made (its answer lost; the database then out of
    // reach for a while), was still in progress when asked about, or never arrived.
    let mut sender = c.client_with(Some(&r.sender)).await;
    let pair = vault_client::AuditFilter { mailbox: ALICE.into(), client: "sender".into(), ..Default::default() };
    let cuts =
        [Cut::AnswerLost, Cut::Late(Duration::from_millis(1500)), Cut::Never, Cut::Outage(Duration::from_millis(1500))];
    for (i, cut) in cuts.into_iter().enumerate() {
        for _ in 0..3 {
            sender.reveal(ALICE, "sender").await.unwrap();
        }
        cutter.arm(b"unnest($1::bigint[]", cut);
        let mut listed = admin.audit_all(&pair, usize::MAX).await;
        for _ in 0..4 {
            if listed.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            listed = admin.audit_all(&pair, usize::MAX).await;
        }
        assert_eq!(cutter.cuts(), 5 + i, "{cut:?}: no flush's COMMIT was cut");
        let reveals: Vec<u64> = listed.unwrap().iter().filter(|e| e.rpc == "Reveal").map(|e| e.count).collect();
        assert_eq!(reveals, vec![3; i + 1], "{cut:?}: three Reveals a window, each window once");
    }
}

//! Data-key rotation on the real binary: RotateDataKey while Reveals run (none fails), after
//! which the keyring holds one key and no file of the data dir holds the old wrapped key; and
//! kill -9 at moments spread over a rotation, after which every code still opens and the
//! rotation finishes on its own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use secrecy::{ExposeSecret, SecretString};

use crate::destruction::files_holding;
use crate::harness::vault::{DataDir, VaultServer, path_str, run};
use crate::harness::{ALICE, ALICE_CODE, PASSPHRASE, Stack};

fn mailbox(i: usize) -> String {
    format!("rot{i:05}@sina.com")
}

fn code(i: usize) -> String {
    format!("ROTATEcode{i:06}")
}

/// Writes `n` bindings for client `sender` straight into the data dir (as an import would), so
/// a rotation has enough rows to take a while.
fn seed(data: &DataDir, n: usize) {
    use vault_server::ids::{ClientId, Mailbox};
    use vault_server::store::{AuditEvent, NewBinding, StoredCode};
    let passphrase = vault_server::secret::Passphrase::new(PASSPHRASE);
    let (store, ring) = vault_server::datadir::unlock(&data.dir, &passphrase).unwrap();
    let client = ClientId::parse("sender").unwrap();
    let rows: Vec<NewBinding> = (0..n)
        .map(|i| {
            let (key_id, generation, sealed) = ring.seal_code(&mailbox(i), "sender", 1, code(i).as_bytes());
            NewBinding {
                mailbox: Mailbox::parse(mailbox(i)).unwrap(),
                client: client.clone(),
                provider: "sina".into(),
                code: StoredCode { key_id, generation: Some(generation), sealed },
                now: 1,
                probe_outcome: vault_server::outcome::ProbeOutcome::Accepted,
            }
        })
        .collect();
    let audit = AuditEvent {
        at: 1,
        caller: "e2e-seed".into(),
        caller_role: "admin".into(),
        rpc: "Import".into(),
        mailbox: String::new(),
        client: String::new(),
        outcome: "OK".into(),
        probe_outcome: None,
        count: n as u64,
        first_at: 1,
        reason: String::new(),
    };
    store.sync().import(&rows, &audit).unwrap();
    store.sync().checkpoint().unwrap();
}

/// (key_id, nonce, wrapped key) of every data key, as an attacker reading the file gets them.
fn wrapped_keys(data: &DataDir) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let db = rusqlite::Connection::open_with_flags(data.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = db.prepare("SELECT key_id, nonce, wrapped_dek FROM keyring ORDER BY key_id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

/// `backup` then `backup verify`: the vault unlocks and every active code opens. The count.
fn every_code_opens(data: &DataDir, scratch: &std::path::Path) -> usize {
    let file = scratch.join(format!("check-{}.db", rand_suffix()));
    let out = run(&["backup", "--data-dir", path_str(&data.dir), path_str(&file)], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pf = path_str(&data.passphrase_file);
    let out = run(&["backup", "verify", path_str(&file), "--passphrase-file", pf], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "verify: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&file).unwrap();
    stdout.split(" active codes open").next().and_then(|s| s.rsplit(' ').next()).unwrap().parse().unwrap()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn metric(addr: &str, name: &str) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.lines().filter(|l| l.starts_with(name)).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn rotate_data_key_while_reveals_run_leaves_one_key_and_no_trace_of_the_old() {
    const N: usize = 3000;
    let mut stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    seed(&stack.data, N);
    let sender = stack.client_token("sender");
    let old = wrapped_keys(&stack.data);
    assert_eq!(old.len(), 1);
    let old_ciphertext: Vec<u8> = {
        let db = rusqlite::Connection::open(stack.data.db()).unwrap();
        db.query_row("SELECT ciphertext FROM credentials WHERE mailbox = ?1", [mailbox(7)], |r| r.get(0)).unwrap()
    };
    stack.restart_with(&["--probe-burst".into(), "100".into(), "--metrics-listen".into(), "127.0.0.1:0".into()]);
    let metrics = stack.server.metrics_addr();
    assert!(metric(&metrics, "vault_data_key_active_id").ends_with(" 1"));

    // Reveals of every pair, round and round, from 4 callers until the rotation returns.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for w in 0..4 {
        let mut c = stack.server.client_with(Some(&sender)).await;
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                match c.reveal(&mailbox(i % N), "sender").await {
                    Ok(r) if r.code.expose_secret() == code(i % N) => served.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("reveal {} failed during rotation: {:?}", i % N, other.map(|r| r.version));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 7;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = served.load(Ordering::Relaxed);
    let report = stack.admin().await.rotate_data_key().await.unwrap();
    let during = served.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a Reveal failed during the rotation");
    assert!(during > 0, "no Reveal was served while the rotation ran");
    assert_eq!((report.active_key_id, report.retired_key_ids.clone()), (2, vec![1]));
    assert_eq!((report.codes_resealed, report.unreadable_codes), (N as u64 + 1, 0));
    assert!(report.tokens_rekeyed >= 2, "the admin and sender tokens are re-MAC'd: {report:?}");
    println!("rotation re-sealed {} codes with {during} Reveals served meanwhile", report.codes_resealed);

    // One key left, visible in the metrics; nothing of the old one in any live file.
    assert_eq!(wrapped_keys(&stack.data).iter().map(|k| k.0).collect::<Vec<_>>(), [2]);
    assert!(metric(&metrics, "vault_data_key_active_id").ends_with(" 2"));
    assert!(metric(&metrics, "vault_data_key_age_seconds").contains("key_id=\"2\""));
    assert!(!metric(&metrics, "vault_data_key_age_seconds").contains("key_id=\"1\""));
    let (_, nonce, wrapped) = &old[0];
    for (what, bytes) in [("wrapped key", wrapped), ("key nonce", nonce), ("a code's old ciphertext", &old_ciphertext)]
    {
        let hits = files_holding(&stack.data, bytes);
        assert!(hits.is_empty(), "the old {what} is still in {hits:?}");
    }

    // Tokens minted before still work, and a restart unlocks with the same passphrase.
    stack.restart_server();
    let mut c = stack.server.client_with(Some(&sender)).await;
    assert_eq!(c.reveal(ALICE, "sender").await.unwrap().code.expose_secret(), ALICE_CODE);
    assert_eq!(c.reveal(&mailbox(N - 1), "sender").await.unwrap().code.expose_secret(), code(N - 1));
    stack.admin().await.get(ALICE, "sender").await.unwrap();
}

#[tokio::test]
async fn kill_dash_nine_during_rotate_data_key_leaves_every_code_readable_and_it_resumes() {
    const N: usize = 4000;
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    seed(&data, N);
    let admin = data.mint_token(&["--admin"]);
    let sender = data.mint_token(&["--client", "sender"]);
    let mut server = VaultServer::start(&data, &[]);
    let mut keys_seen = Vec::new();
    // Kill points spread from "before the new key is stored" to "after the old one is gone".
    for (round, delay_ms) in [0u64, 5, 15, 30, 60, 120, 250].into_iter().enumerate() {
        let endpoint_admin = server.client_with(Some(&admin)).await;
        let call = tokio::spawn(async move {
            let mut c = endpoint_admin;
            c.rotate_data_key().await
        });
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        server.kill_hard();
        let _ = call.await;
        let keys: Vec<i64> = wrapped_keys(&data).iter().map(|k| k.0).collect();
        assert!(matches!(keys.len(), 1 | 2), "round {round}: keyring {keys:?}");
        keys_seen.push(keys.clone());
        let db = rusqlite::Connection::open(data.db()).unwrap();
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok", "round {round}");
        drop(db);
        assert_eq!(every_code_opens(&data, tmp.path()), N, "round {round} ({delay_ms} ms)");
        server = VaultServer::start(&data, &[]);
        if keys.len() == 2 {
            // The start resumes the interrupted rotation by itself: no call is made.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while wrapped_keys(&data).len() != 1 {
                assert!(std::time::Instant::now() < deadline, "round {round}: the rotation did not resume");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let mut c = server.client_with(Some(&sender)).await;
        for i in [0, N / 2, N - 1] {
            assert_eq!(c.reveal(&mailbox(i), "sender").await.unwrap().code.expose_secret(), code(i), "round {round}");
        }
    }
    // Some kills caught a rotation midway (two keys), so resumption was exercised.
    assert!(keys_seen.iter().any(|k| k.len() == 2), "no kill landed mid-rotation: {keys_seen:?}");
    // A call now joins the resumed rotation (or starts one) and ends with one key.
    let report = server.client_with(Some(&admin)).await.rotate_data_key().await.unwrap();
    assert_eq!(wrapped_keys(&data).iter().map(|k| k.0).collect::<Vec<_>>(), [i64::from(report.active_key_id)]);
    server.kill_hard();
    assert_eq!(every_code_opens(&data, tmp.path()), N);
}

#[test]
fn data_key_max_age_rotates_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    seed(&data, 10);
    let server = VaultServer::start(&data, &["--data-key-max-age".into(), "2s".into()]);
    server.wait_for_log("data-key rotation finished");
    let keys: Vec<i64> = wrapped_keys(&data).iter().map(|k| k.0).collect();
    assert!(keys.len() == 1 && keys[0] >= 2, "{keys:?}");
    assert!(server.log().contains("reached --data-key-max-age"), "{}", server.log());
    assert_eq!(every_code_opens(&data, tmp.path()), 10);
}

#[tokio::test]
async fn rotate_data_key_waits_for_a_long_reader_before_it_says_the_old_key_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::init(tmp.path(), PASSPHRASE);
    seed(&data, 50);
    let admin = data.mint_token(&["--admin"]);
    let server = VaultServer::start(&data, &[]);
    let old = wrapped_keys(&data).remove(0);
    // A reader holding its snapshot (as a long backup does) keeps the WAL from being truncated.
    let reader = rusqlite::Connection::open(data.db()).unwrap();
    reader.execute_batch("BEGIN; SELECT count(*) FROM credentials;").unwrap();
    let mut c = server.client_with(Some(&admin)).await;
    let call = tokio::spawn(async move { c.rotate_data_key().await });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!call.is_finished(), "RotateDataKey answered while the old wrapping was still in the WAL");
    reader.execute_batch("COMMIT;").unwrap();
    drop(reader);
    let report = tokio::time::timeout(std::time::Duration::from_secs(30), call).await.unwrap().unwrap().unwrap();
    assert_eq!(report.retired_key_ids, [1]);
    for bytes in [&old.1, &old.2] {
        let hits = files_holding(&data, bytes);
        assert!(hits.is_empty(), "the old key's wrapping is still in {hits:?}");
    }
}

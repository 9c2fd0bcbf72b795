//! The quarterly review and the audit trail through the real binary, vault-client and grpcurl;
//! usage across restarts; graceful shutdown; observability.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::time::Duration;

use secrecy::SecretString;
use tonic::Code;
use vault_client::{AuditFilter, UnusedFilter, proto};

use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, Stack, grpcurl};

fn code(s: &str) -> SecretString {
    SecretString::from(s)
}

#[tokio::test]
async fn usage_survives_a_graceful_restart_and_the_review_and_audit_trail_list_it() {
    let mut stack = Stack::start();
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    admin.bind(ALICE, "foxmail", code(ALICE_CODE)).await.unwrap();
    admin.bind(BOB, "sender", code(BOB_CODE)).await.unwrap();
    admin.revoke(BOB, "sender", "left").await.unwrap();
    let mut sender = stack.as_client("sender").await;
    for _ in 0..3 {
        sender.reveal(ALICE, "sender").await.unwrap();
    }
    // The default flush interval is 30 s: the usage is only in memory until the graceful stop.
    stack.restart_server();
    let mut admin = stack.admin().await;
    let cred = admin.get(ALICE, "sender").await.unwrap();
    assert!(cred.last_used_at.is_some(), "usage lost across a graceful restart");
    assert!(admin.get(ALICE, "foxmail").await.unwrap().last_used_at.is_none());

    // Unused for zero seconds: every active pair, oldest activity first; revoked bob excluded.
    let page =
        admin.list_unused(&UnusedFilter { unused_for: Some(Duration::ZERO), ..Default::default() }, "").await.unwrap();
    let names: Vec<String> = page.items.iter().map(|c| format!("{}/{}", c.mailbox, c.client)).collect();
    assert_eq!(names, ["alice@sina.com/foxmail", "alice@sina.com/sender"]);
    assert!(page.items[0].last_used_at.is_none() && page.items[1].last_used_at.is_some());
    assert_eq!(page.items[1].last_probe_outcome, proto::ProbeOutcome::Accepted);
    // The default window (90 days) lists nothing this fresh.
    assert!(admin.list_unused(&UnusedFilter::default(), "").await.unwrap().items.is_empty());

    let auth = format!("authorization: Bearer {}", stack.admin_token);
    let out = grpcurl::call(
        &stack.server,
        &["-H", &auth, "-d", r#"{"unused_for":"0s"}"#],
        &["vault.v1.AuthCodeVault/ListUnusedClients"],
    );
    assert!(out.contains("\"client\": \"foxmail\"") && out.contains("lastUsedAt"), "{out}");
    assert!(!out.contains("bob@sina.com"), "{out}");

    // The audit trail: newest first; the three Reveals are one aggregated event.
    let sender_id = format!("tk_{}", &stack.client_token("sender")[4..16]);
    let events = admin.audit_events(&AuditFilter::default(), "").await.unwrap().items;
    let rpcs: Vec<(&str, &str)> = events.iter().map(|e| (e.rpc.as_str(), e.outcome.as_str())).collect();
    let revoke = [("Revoke", "OLD_CODE_PROBED"), ("Revoke", "OK")];
    assert_eq!(rpcs, [[("Reveal", "OK")].as_slice(), &revoke, &[("Bind", "OK"); 3]].concat());
    let reveal = &events[0];
    assert_eq!(
        (reveal.count, reveal.caller.as_str(), reveal.caller_role.as_str()),
        (3, sender_id.as_str(), "client:sender")
    );
    assert_eq!(events[3].probe_outcome, Some(proto::ProbeOutcome::Accepted));
    assert_eq!((events[1].caller_role.as_str(), events[2].caller_role.as_str()), ("admin", "admin"));
    let by_sender = format!(r#"{{"caller":"{sender_id}"}}"#);
    let out =
        grpcurl::call(&stack.server, &["-H", &auth, "-d", &by_sender], &["vault.v1.AuthCodeVault/ListAuditEvents"]);
    assert!(out.contains("\"rpc\": \"Reveal\"") && out.contains("\"count\": \"3\"") && !out.contains("Bind"), "{out}");
}

#[tokio::test]
async fn refused_probes_are_audited_and_a_failed_audit_write_blocks_the_change() {
    let stack = Stack::start();
    let mut admin = stack.admin().await;
    assert!(admin.bind(ALICE, "sender", code("WRONGwrong123456")).await.is_err());
    let events = admin.audit_events(&AuditFilter::default(), "").await.unwrap().items;
    assert_eq!((events[0].rpc.as_str(), events[0].outcome.as_str()), ("Bind", "PROBE_REJECTED"));
    admin.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();

    // Simulate a full disk for the audit table only.
    let db = rusqlite::Connection::open(stack.data.db()).unwrap();
    db.execute_batch(
        "CREATE TRIGGER audit_fails BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'audit write failed'); END;",
    )
    .unwrap();
    let err = admin.bind(BOB, "sender", code(BOB_CODE)).await.unwrap_err();
    assert!(matches!(err, vault_client::Error::Other { code: Code::Internal, .. }), "{err:?}");
    assert!(matches!(admin.get(BOB, "sender").await, Err(vault_client::Error::NotFound)));
    assert!(admin.revoke(ALICE, "sender", "").await.is_err());
    let cred = admin.get(ALICE, "sender").await.unwrap();
    assert_eq!(cred.state, proto::CredentialState::Active, "revoked without an audit row");
    db.execute_batch("DROP TRIGGER audit_fails;").unwrap();
    admin.revoke(ALICE, "sender", "").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_rpc_finish_then_flushes_usage_and_checkpoints() {
    let mut stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    // A "provider" that accepts connections and never answers keeps a Bind in flight.
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = blackhole.local_addr().unwrap();
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = blackhole.accept() {
            held.push(s);
            let _ = accepted_tx.send(());
        }
    });
    stack.restart_with(&[
        "--probe-resolve".into(),
        format!("imap.vip.sina.com:993={hole}"),
        "--probe-timeout".into(),
        "3".into(),
        "--usage-flush-interval".into(),
        "3600".into(),
    ]);
    let before = stack.admin().await.get(ALICE, "sender").await.unwrap().last_used_at;
    assert!(before.is_none());
    stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap();

    let mut admin = stack.admin().await;
    let in_flight = tokio::spawn(async move { admin.bind("carol@vip.sina.com", "sender", code(ALICE_CODE)).await });
    tokio::task::spawn_blocking(move || accepted_rx.recv_timeout(Duration::from_secs(10)).unwrap()).await.unwrap();
    let mut server = std::mem::replace(&mut stack.server, crate::harness::vault::VaultServer::placeholder());
    let status = tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
    assert!(status.success(), "exit {status}");
    // The in-flight Bind got its answer before the process ended.
    let answer = in_flight.await.unwrap();
    assert!(matches!(answer, Err(vault_client::Error::ProviderUnavailable { .. })), "{answer:?}");
    let wal = std::fs::metadata(stack.data.dir.join("vault.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal, 0, "the WAL was not checkpointed at shutdown");

    stack.restart_after_stop();
    let cred = stack.admin().await.get(ALICE, "sender").await.unwrap();
    assert!(cred.last_used_at.is_some(), "usage was not flushed at shutdown");
}

#[tokio::test]
async fn json_logs_and_prometheus_metrics() {
    let mut stack = Stack::start();
    stack.restart_with(&["--log-format".into(), "json".into(), "--metrics-listen".into(), "127.0.0.1:0".into()]);
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    assert!(admin.bind(ALICE, "sender", code(ALICE_CODE)).await.is_err());
    assert!(stack.admin().await.reveal(ALICE, "sender").await.is_err());

    stack.server.wait_for_log("metrics on http://");
    stack.server.wait_for_log("\"rpc\":\"Bind\"");
    let log = stack.server.log();
    let mut rpc_lines = 0;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["span"]["rpc"] == "Bind" {
            rpc_lines += 1;
            assert_eq!(v["span"]["mailbox"], ALICE);
        }
    }
    assert!(rpc_lines > 0, "no Bind span fields in:\n{log}");

    let addr =
        log.split("metrics on http://").nth(1).and_then(|r| r.split("/metrics").next()).expect("metrics address");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for needle in [
        "vault_rpc_requests_total{method=\"Bind\",code=\"OK\"} 1",
        "vault_rpc_requests_total{method=\"Bind\",code=\"ALREADY_EXISTS\"} 1",
        "vault_rpc_requests_total{method=\"Reveal\",code=\"PERMISSION_DENIED\"} 1",
        "vault_rpc_duration_seconds_count{method=\"Bind\",code=\"OK\"} 1",
        "vault_probes_total{provider=\"sina\",outcome=\"ACCEPTED\"} 1",
        "vault_bindings{state=\"active\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // No label names a mailbox, a client, a token or a code.
    for secretish in [ALICE, "alice", "\"sender\"", "tk_", "avt_", ALICE_CODE] {
        assert!(!text.contains(secretish), "{secretish} in the metrics:\n{text}");
    }
    // Only GET /metrics is served.
    for request in
        ["GET / HTTP/1.1\r\nHost: x\r\n\r\n", "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"]
    {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{request:?}: {answer}");
    }
}

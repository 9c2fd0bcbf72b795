//! Attacks on the listener and on the token table, played for real: raw HTTP/2 stream floods,
//! idle sockets, a full connection cap, bad-token bursts, and hand edits of the database.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tonic::Code;
use tonic_types::StatusExt as _;
use vault_client::proto;

use crate::harness::vault::{path_str, run};
use crate::harness::{ALICE, ALICE_CODE, Stack};

/// A raw HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name", no Huffman.
fn header(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    block.push(u8::try_from(name.len()).unwrap());
    block.extend_from_slice(name.as_bytes());
    block.push(u8::try_from(value.len()).unwrap());
    block.extend_from_slice(value.as_bytes());
}

/// Opens a raw HTTP/2 connection; returns it and the server's SETTINGS_MAX_CONCURRENT_STREAMS.
fn h2_connect(addr: std::net::SocketAddr) -> (TcpStream, Option<u32>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).unwrap();
    // The server's first frame is its SETTINGS.
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[3], 0x4, "first server frame is not SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    let max_streams = payload
        .chunks(6)
        .find(|c| u16::from_be_bytes([c[0], c[1]]) == 0x3)
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    s.write_all(&frame(0x4, 0x1, 0, &[])).unwrap();
    (s, max_streams)
}

/// Sends `n` HEADERS frames (no body, no END_STREAM) for `path` on `s`, with `extra` headers.
fn open_bodiless_streams(s: &mut TcpStream, n: u32, path: &str, extra: &[(&str, &str)]) {
    let mut out = Vec::new();
    for i in 0..n {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "vault"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .chain(extra)
        {
            header(&mut block, name, value);
        }
        out.extend(frame(0x1, 0x4, 2 * i + 1, &block));
    }
    // The server may reset or close the connection part way; that is its right.
    let _ = s.write_all(&out);
}

/// Reads and drops whatever the server sends, until it closes.
fn drain(mut s: TcpStream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    })
}

#[tokio::test]
async fn stream_flood_and_idle_sockets_do_not_starve_reveal() {
    let stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let mut sender = stack.as_client("sender").await;
    sender.reveal(ALICE, "sender").await.unwrap();
    let addr = stack.server.addr;

    // One connection, more health streams than the limit: headers sent, no body ever.
    let (mut health_flood, max_streams) = h2_connect(addr);
    assert_eq!(max_streams, Some(128), "the server must advertise SETTINGS_MAX_CONCURRENT_STREAMS");
    open_bodiless_streams(&mut health_flood, 1150, "/grpc.health.v1.Health/Check", &[]);
    // Another: vault streams with a garbage token, also bodiless.
    let (mut vault_flood, _) = h2_connect(addr);
    let garbage = "Bearer avt_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    open_bodiless_streams(&mut vault_flood, 1150, "/vault.v1.AuthCodeVault/Reveal", &[("authorization", garbage)]);
    let drains = [drain(health_flood), drain(vault_flood)];
    // A few hundred idle TCP connections that never speak.
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut fresh = stack.as_client("sender").await;
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let revealed = fresh.reveal(ALICE, "sender").await.expect("Reveal during the flood");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&revealed.code), ALICE_CODE);
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "a Reveal took {slowest:?} during the flood");
    drop(idle);
    drop(drains);
}

#[tokio::test]
async fn silent_connections_are_closed_and_the_oldest_gives_way_at_the_cap() {
    let mut stack = Stack::start();
    stack.restart_with(&["--handshake-timeout".into(), "3".into(), "--max-connections".into(), "4".into()]);
    let addr = stack.server.addr;
    // Two say nothing, two send one byte of the HTTP/2 preface and stop (slowloris); a little
    // apart, so that the server accepts them in this order.
    let idle: Vec<TcpStream> = (0..4)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            if i % 2 == 1 {
                s.write_all(b"P").unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    // Over the cap: served (SETTINGS), in place of the oldest of them, closed at once.
    let started = Instant::now();
    let (_extra, answered) = h2_from("127.0.0.1:0", addr);
    assert!(answered, "at the cap, a new connection was refused while silent ones held every slot");
    let mut idle = idle.into_iter();
    let mut oldest = idle.next().unwrap();
    assert!(closed_within(&mut oldest, Duration::from_millis(300)), "the oldest silent connection kept its slot");
    assert!(started.elapsed() < Duration::from_secs(1), "it gave way only after {:?}", started.elapsed());
    // The others are closed after the handshake timeout.
    for mut s in idle {
        assert!(closed_within(&mut s, Duration::from_secs(5)), "a silent connection was kept");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // And the listener serves again.
    stack.admin().await.list(&Default::default(), "").await.unwrap();
}

/// The ErrorInfo reason of a status.
fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// Runs `sql` against the live database, as an attacker with write access to the file would.
fn edit_db(stack: &Stack, sql: &str, params: impl rusqlite::Params) {
    let db = rusqlite::Connection::open(stack.data.db()).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    // As the sqlite3 shell has it: no foreign-key checks.
    db.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    db.execute(sql, params).unwrap();
}

fn token_id(token: &str) -> String {
    format!("tk_{}", &token[4..16])
}

/// Waits (up to `within`) until Reveal with `c` gives `want`.
async fn reveal_becomes(c: &mut vault_client::VaultClient, want: Code, within: Duration) {
    let started = Instant::now();
    loop {
        let got = match c.raw().reveal(proto::RevealRequest { mailbox: ALICE.into(), client: "sender".into() }).await {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        if got == want {
            return;
        }
        assert!(started.elapsed() < within, "Reveal still {got:?} after {within:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn clearing_revoked_at_in_the_database_does_not_revive_a_token() {
    let stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let token = stack.client_token("sender");
    let mut c = stack.as_client("sender").await;
    c.reveal(ALICE, "sender").await.unwrap();
    let id = token_id(&token);
    let out = run(&["token", "revoke", "--data-dir", path_str(&stack.data.dir), &id], &[]);
    assert!(out.status.success());
    reveal_becomes(&mut c, Code::Unauthenticated, Duration::from_secs(1)).await;

    edit_db(&stack, "UPDATE tokens SET revoked_at = NULL WHERE id = ?1", [&id]);
    // Several reload periods later, still refused.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let err = c.raw().reveal(proto::RevealRequest { mailbox: ALICE.into(), client: "sender".into() }).await;
    assert_eq!(err.unwrap_err().code(), Code::Unauthenticated, "a NULLed revoked_at revived the token");
    stack.server.wait_for_log("no valid MAC");
    let list = run(&["token", "list", "--data-dir", path_str(&stack.data.dir)], &[]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.lines().any(|l| l.starts_with(&id) && l.ends_with("revoked")), "{list}");
}

#[tokio::test]
async fn a_malformed_token_row_is_skipped_reported_and_survives_a_restart() {
    let mut stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let sender_token = stack.client_token("sender");
    let mut sender = stack.as_client("sender").await;
    sender.reveal(ALICE, "sender").await.unwrap();
    // A row no real mint could write: key_id -1 (the attacker's session has no foreign keys on).
    edit_db(
        &stack,
        "INSERT INTO tokens (id, role, digest, key_id, mac, created_at) VALUES ('tk_badbadbadbad', 'admin', X'00', -1, X'00', 0)",
        [],
    );
    stack.server.wait_for_log("tk_badbadbadbad");
    assert!(stack.server.log().contains("key_id"), "the warning should say what is wrong");
    // Other tokens keep working; a revocation made after the bad row is honoured within a second.
    sender.reveal(ALICE, "sender").await.unwrap();
    let fresh = stack.data.mint_token(&["--client", "sender"]);
    let mut fresh_client = stack.server.client_with(Some(&fresh)).await;
    fresh_client.reveal(ALICE, "sender").await.expect("a token minted after the bad row works at once");
    let out = run(&["token", "revoke", "--data-dir", path_str(&stack.data.dir), &token_id(&sender_token)], &[]);
    assert!(out.status.success());
    reveal_becomes(&mut sender, Code::Unauthenticated, Duration::from_secs(1)).await;
    // token list survives the bad row and says so.
    let list = run(&["token", "list", "--data-dir", path_str(&stack.data.dir)], &[]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(text.lines().any(|l| l.starts_with("tk_badbadbadbad") && l.ends_with("unreadable")), "{text}");
    assert!(String::from_utf8_lossy(&list.stderr).contains("tk_badbadbadbad"));
    // A forged admin row, well formed but with a MAC no mint made: the list says so, given the
    // passphrase, and never calls it active without it.
    edit_db(
        &stack,
        "INSERT INTO tokens (id, role, digest, key_id, mac, created_at) \
         VALUES ('tk_forgedforged', 'admin', randomblob(32), (SELECT max(key_id) FROM keyring), randomblob(32), 0)",
        [],
    );
    let state_of = |args: &[&str], id: &str| {
        let out = run(args, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} not in:\n{text}"));
        (
            line.split_whitespace().last().unwrap_or_default().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = path_str(&stack.data.dir);
    let checked = ["token", "list", "--data-dir", dir, "--passphrase-file", path_str(&stack.data.passphrase_file)];
    let (state, warnings) = state_of(&checked, "tk_forgedforged");
    assert_eq!(state, "unreadable");
    assert!(warnings.contains("tk_forgedforged has no valid MAC"), "{warnings}");
    assert_eq!(state_of(&checked, &token_id(&fresh)).0, "active");
    let (state, note) = state_of(&["token", "list", "--data-dir", dir], "tk_forgedforged");
    assert_eq!(state, "unchecked");
    assert!(note.contains("MACs not checked"), "{note}");
    // And so does a restart.
    stack.restart_server();
    let mut fresh_client = stack.server.client_with(Some(&fresh)).await;
    fresh_client.reveal(ALICE, "sender").await.unwrap();
    stack.server.wait_for_log("tk_badbadbadbad");
}

#[tokio::test]
async fn tokens_are_refused_while_the_table_cannot_be_read() {
    let stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let mut sender = stack.as_client("sender").await;
    sender.reveal(ALICE, "sender").await.unwrap();
    edit_db(&stack, "ALTER TABLE tokens RENAME TO tokens_hidden", []);
    reveal_becomes(&mut sender, Code::Unavailable, Duration::from_millis(1600)).await;
    let status =
        sender.raw().reveal(proto::RevealRequest { mailbox: ALICE.into(), client: "sender".into() }).await.unwrap_err();
    assert_eq!(reason(&status), "TOKENS_UNAVAILABLE");
    edit_db(&stack, "ALTER TABLE tokens_hidden RENAME TO tokens", []);
    reveal_becomes(&mut sender, Code::Ok, Duration::from_secs(2)).await;
}

/// p50 of `n` Reveals, each timed.
async fn reveal_p50(c: &mut vault_client::VaultClient, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        c.reveal(ALICE, "sender").await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn a_burst_of_bad_tokens_is_throttled_while_valid_callers_keep_their_pace() {
    let mut stack = Stack::start();
    stack.restart_with(&["--metrics-listen".into(), "127.0.0.1:0".into()]);
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let mut sender = stack.as_client("sender").await;
    let before = reveal_p50(&mut sender, 50).await;

    let mut attacker =
        stack.server.client_with(Some("avt_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")).await;
    let burst = async {
        let (mut unauthenticated, mut throttled) = (0, 0);
        for _ in 0..100 {
            let r =
                attacker.raw().reveal(proto::RevealRequest { mailbox: ALICE.into(), client: "sender".into() }).await;
            let status = r.unwrap_err();
            match status.code() {
                Code::Unauthenticated => unauthenticated += 1,
                Code::ResourceExhausted => {
                    assert_eq!(reason(&status), "AUTH_THROTTLED");
                    assert!(status.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "no RetryInfo");
                    throttled += 1;
                }
                other => panic!("{other:?}: {status:?}"),
            }
        }
        (unauthenticated, throttled)
    };
    let (burst, during) = tokio::join!(burst, reveal_p50(&mut sender, 50));
    let (unauthenticated, throttled) = burst;
    assert!(throttled >= 70, "only {throttled} of 100 bad-token calls were throttled ({unauthenticated} answered)");
    assert!(
        during < before * 5 + Duration::from_millis(20),
        "a valid caller slowed from {before:?} to {during:?} during the burst"
    );
    println!("bad-token burst: {throttled}/100 throttled; valid Reveal p50 {before:?} before, {during:?} during");
    // The metric counts them.
    let addr = stack.server.metrics_addr();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let line = text.lines().find(|l| l.starts_with("vault_auth_failures_total{reason=\"AUTH_THROTTLED\"}")).unwrap();
    let counted: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted, throttled, "{line}");
}

#[test]
fn a_passphrase_file_others_can_read_stops_start_up_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let data = crate::harness::vault::DataDir::init(tmp.path(), crate::harness::PASSPHRASE);
    std::fs::set_permissions(&data.passphrase_file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = run(
        &[
            "serve",
            "--data-dir",
            path_str(&data.dir),
            "--passphrase-file",
            path_str(&data.passphrase_file),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("by group or others") && stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains(crate::harness::PASSPHRASE));
}

#[tokio::test]
async fn idle_connections_cannot_keep_a_scrape_out_of_the_metrics_endpoint() {
    let mut stack = Stack::start();
    stack.restart_with(&["--metrics-listen".into(), "127.0.0.1:0".into()]);
    let addr = stack.server.metrics_addr();
    // Every slot held by a socket that never sends a request, from the scraper's own address.
    let mut held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let mut conn = TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        assert!(text.starts_with("HTTP/1.1 200") && text.contains("vault_bindings"), "scrape kept out: {text:?}");
    }
    // The first scrape closed the oldest idle socket; the next ones took the slot it gave back,
    // or (when the scrape before had not given its slot back yet) closed the next oldest.
    let mut byte = [0u8; 1];
    let closed: Vec<bool> = held
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            matches!(s.read(&mut byte), Ok(0))
        })
        .collect();
    let given_way = closed.iter().take_while(|c| **c).count();
    assert!(
        (1..=3).contains(&given_way) && !closed[given_way..].contains(&true),
        "oldest first, one a scrape: {closed:?}"
    );
}

#[tokio::test]
async fn streaming_health_calls_hold_their_public_slots() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut stack = Stack::start();
    stack.restart_with(&["--max-public-rpcs".into(), "2".into()]);
    let channel = tonic::transport::Channel::from_shared(stack.server.endpoint()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let watch = || HealthCheckRequest { service: String::new() };
    // Two Watch streams stay open, each holding a slot.
    let mut a = health.clone().watch(watch()).await.unwrap().into_inner();
    let mut b = health.clone().watch(watch()).await.unwrap().into_inner();
    assert!(a.message().await.unwrap().is_some() && b.message().await.unwrap().is_some());
    let refused = health.check(watch()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason(&refused), "PUBLIC_BUDGET_EXHAUSTED");
    // The vault itself is not affected.
    stack.admin().await.list(&Default::default(), "").await.unwrap();
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(200)).await;
    health.check(watch()).await.expect("slots come back when the streams end");
}

#[tokio::test]
async fn a_tls_client_that_never_speaks_http2_is_closed() {
    use rustls_pki_types::pem::PemObject as _;
    use tokio::io::AsyncReadExt as _;
    let mut stack = Stack::start();
    let dir = stack.data.dir.parent().unwrap().to_owned();
    let ca = crate::harness::pki::TestCa::new(&dir, "listener");
    let cert = ca.issue(&dir, "listener", &["localhost"]);
    stack.restart_with(&[
        "--tls-cert".into(),
        path_str(&cert.cert).into(),
        "--tls-key".into(),
        path_str(&cert.key).into(),
        "--handshake-timeout".into(),
        "1".into(),
    ]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_file(&ca.cert).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(stack.server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    // The handshake completes; then the client says nothing.
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut [0u8; 64])).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "the stalled TLS connection was kept: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "closed only after {:?}", started.elapsed());
}

/// A connection that sent the HTTP/2 preface from `source` (any 127/8 address on Linux), and
/// whether the server answered it with its SETTINGS frame.
fn h2_from(source: &str, to: std::net::SocketAddr) -> (TcpStream, bool) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&source.parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut header = [0u8; 9];
    let answered = s.read_exact(&mut header).is_ok() && header[3] == 0x4;
    (s, answered)
}

#[tokio::test]
async fn one_peer_cannot_hold_every_connection() {
    let mut stack = Stack::start();
    stack.restart_with(&["--max-connections-per-peer".into(), "3".into()]);
    let addr = stack.server.addr;
    // Three open HTTP/2 connections from one address, then held silently (pings would keep them).
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (s, answered) = h2_from("127.0.0.1:0", addr);
            assert!(answered, "a connection under the peer's cap was refused");
            s
        })
        .collect();
    let (_, answered) = h2_from("127.0.0.1:0", addr);
    assert!(!answered, "a fourth connection from the same address was served");
    let (_other, answered) = h2_from("127.0.0.2:0", addr);
    assert!(answered, "another address was refused");
    // Closed, the slots come back.
    drop(held);
    let started = Instant::now();
    while !h2_from("127.0.0.1:0", addr).1 {
        assert!(started.elapsed() < Duration::from_secs(5), "the closed connections' slots never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    stack.admin().await.list(&Default::default(), "").await.unwrap();
}

/// Whether the server closes `s` within `within`, reading (and dropping) what it sends meanwhile.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(100)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
}

#[tokio::test]
async fn connections_without_a_token_give_way_at_the_cap_to_callers_with_one() {
    let mut stack = Stack::start();
    stack.restart_with(&[
        "--max-connections".into(),
        "6".into(),
        "--max-connections-per-peer".into(),
        "2".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let addr = stack.server.addr;
    // A caller with a token, connected before the flood.
    let mut early = stack.as_client("sender").await;
    early.reveal(ALICE, "sender").await.unwrap();
    // Five connections without a token, from three addresses (under each one's cap), fill the
    // other slots and are held silently.
    let mut held: Vec<TcpStream> = ["127.0.0.2:0", "127.0.0.2:0", "127.0.0.3:0", "127.0.0.3:0", "127.0.0.4:0"]
        .iter()
        .map(|from| {
            let (s, answered) = h2_from(from, addr);
            assert!(answered, "a connection under the caps was refused");
            s
        })
        .collect();
    // One more without a token is served in place of the oldest such one.
    let (mut sixth, answered) = h2_from("127.0.0.4:0", addr);
    assert!(answered, "at the cap, a new connection was refused while one without a token held a slot");
    assert!(closed_within(&mut held[0], Duration::from_secs(5)), "the oldest connection without a token was kept");
    // A new caller with a token is served too, in place of the next oldest.
    let mut fresh = stack.as_client("sender").await;
    let revealed = fresh.reveal(ALICE, "sender").await.expect("a caller with a token was kept out by the flood");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&revealed.code), ALICE_CODE);
    assert!(closed_within(&mut held[1], Duration::from_secs(5)), "the next oldest connection was kept");
    // The caller connected before the flood kept its connection: had it been closed, its
    // reconnection would have closed a third connection without a token.
    early.reveal(ALICE, "sender").await.unwrap();
    for (i, s) in held.iter_mut().enumerate().skip(2) {
        assert!(!closed_within(s, Duration::from_millis(300)), "connection {i} was closed, but only two gave way");
    }
    assert!(!closed_within(&mut sixth, Duration::from_millis(300)), "the newest connection was closed");
    // With every slot held by callers that authenticated, a new connection is closed at once.
    let mut callers = vec![early, fresh];
    drop(held);
    drop(sixth);
    for from in ["127.0.0.5", "127.0.0.5", "127.0.0.6", "127.0.0.6"] {
        let mut c = stack.server.client_from(from, Some(&stack.client_token("sender"))).await;
        c.reveal(ALICE, "sender").await.unwrap();
        callers.push(c);
    }
    let started = Instant::now();
    let (_, answered) = h2_from("127.0.0.7:0", addr);
    assert!(!answered, "a connection over a cap held by callers with tokens was served");
    assert!(started.elapsed() < Duration::from_millis(900), "closed only after {:?}", started.elapsed());
    for c in &mut callers {
        c.reveal(ALICE, "sender").await.expect("a caller with a token lost its connection");
    }
    // Counted as README says: two gave way (more, if a dropped connection's close was not seen
    // yet when the callers reconnected), one was closed on accept.
    let metrics = stack.server.metrics_text();
    let count = |name: &str| {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).unwrap_or_else(|| panic!("no {name}:\n{metrics}"))
    };
    assert!(count("vault_connections_given_way_total") >= 2, "{metrics}");
    assert_eq!(count("vault_connections_refused_total"), 1, "{metrics}");
}

/// Sends, on a fresh raw connection, one Reveal stream whose header list carries `pad` bytes of
/// an extra header (split into CONTINUATION frames); returns the frames the server sent on that
/// stream, as (type, flags, payload), until it reset the stream or went quiet for a second.
fn reveal_with_header_pad(addr: std::net::SocketAddr, pad: usize) -> Vec<(u8, u8, Vec<u8>)> {
    let (mut s, _) = h2_connect(addr);
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/vault.v1.AuthCodeVault/Reveal"),
        (":authority", "vault"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        header(&mut block, name, value);
    }
    // A literal with a long value: the length as an HPACK integer (7-bit prefix).
    block.extend_from_slice(&[0, 5]);
    block.extend_from_slice(b"x-pad");
    let mut len = pad;
    if len < 127 {
        block.push(u8::try_from(len).unwrap());
    } else {
        block.push(127);
        len -= 127;
        while len >= 128 {
            block.push(u8::try_from(len % 128).unwrap() | 0x80);
            len /= 128;
        }
        block.push(u8::try_from(len).unwrap());
    }
    block.extend(std::iter::repeat_n(b'a', pad));
    let mut chunks = block.chunks(8 * 1024).peekable();
    let mut out = Vec::new();
    let mut kind = 0x1;
    while let Some(chunk) = chunks.next() {
        // END_HEADERS on the last; the stream ends with the empty body (END_STREAM on HEADERS).
        let flags = if chunks.peek().is_none() { 0x4 } else { 0 } | if kind == 0x1 { 0x1 } else { 0 };
        out.extend(frame(kind, flags, 1, chunk));
        kind = 0x9;
    }
    s.write_all(&out).unwrap();
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).is_err() {
            break;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if stream == 1 {
            let reset = head[3] == 0x3;
            got.push((head[3], head[4], payload));
            if reset {
                break;
            }
        }
    }
    got
}

#[tokio::test]
async fn header_lists_and_messages_over_16_kib_are_refused_on_every_service() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let addr = stack.server.addr;
    // HPACK of the response's first header: `:status: 200` is static entry 8 (one byte, 0x88);
    // `:status: 431` a literal with that name and the Huffman code of "431".
    let status = |frames: &[(u8, u8, Vec<u8>)]| {
        frames.iter().find(|(kind, _, _)| *kind == 0x1).map(|(_, _, block)| block.clone()).unwrap_or_default()
    };
    // Under the cap, the stream reaches the vault (no token: 200 and UNAUTHENTICATED).
    let under = reveal_with_header_pad(addr, 8 * 1024);
    assert_eq!(status(&under).first(), Some(&0x88), "an 8 KiB header list was not answered: {under:?}");
    // Over it, the stream is refused with 431 before any service sees it.
    let over = reveal_with_header_pad(addr, 20 * 1024);
    assert_eq!(status(&over), [0x48, 0x83, 0x69, 0x90, 0xff], "a 20 KiB header list was not refused: {over:?}");

    // Messages: refused with OUT_OF_RANGE on the vault, health and reflection alike; a message
    // just under the cap is decoded (and then judged on its content).
    let channel = tonic::transport::Channel::from_shared(stack.server.endpoint()).unwrap().connect().await.unwrap();
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {}", stack.client_token("sender")).parse().unwrap();
    let mut vault = proto::auth_code_vault_client::AuthCodeVaultClient::with_interceptor(
        channel.clone(),
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", token.clone());
            Ok(r)
        },
    );
    let reveal = |mailbox: String| proto::RevealRequest { mailbox, client: "sender".into() };
    let big = vault.reveal(reveal("a".repeat(17 * 1024))).await.unwrap_err();
    assert_eq!(big.code(), Code::OutOfRange, "{}", big.message());
    let small = vault.reveal(reveal("a".repeat(15 * 1024))).await.unwrap_err();
    assert_eq!(small.code(), Code::InvalidArgument, "{}", small.message());
    let mut health = HealthClient::new(channel.clone());
    let big = health.check(HealthCheckRequest { service: "a".repeat(17 * 1024) }).await.unwrap_err();
    assert_eq!(big.code(), Code::OutOfRange, "{}", big.message());
    let small = health.check(HealthCheckRequest { service: "a".repeat(15 * 1024) }).await.unwrap_err();
    assert_eq!(small.code(), Code::NotFound);
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest,
        };
        let mut reflection = ServerReflectionClient::new(channel);
        let ask = |symbol: String| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol)),
        };
        let mut stream = reflection
            .server_reflection_info(tokio_stream::iter([ask("a".repeat(17 * 1024))]))
            .await
            .unwrap()
            .into_inner();
        // tonic's reflection service ends its stream on a request it cannot decode.
        match stream.message().await {
            Ok(None) => {}
            Err(status) => assert_eq!(status.code(), Code::OutOfRange),
            Ok(Some(_)) => panic!("a 17 KiB reflection request was answered"),
        }
        let mut stream = reflection
            .server_reflection_info(tokio_stream::iter([ask("a".repeat(15 * 1024))]))
            .await
            .unwrap()
            .into_inner();
        // Decoded and judged: no such symbol.
        let small = stream.message().await.map(|m| m.is_some()).map_err(|s| s.code());
        assert_eq!(small, Err(Code::NotFound), "a 15 KiB reflection request was not judged");
    }
    // And the vault serves on.
    let mut sender = stack.as_client("sender").await;
    assert_eq!(secrecy::ExposeSecret::expose_secret(&sender.reveal(ALICE, "sender").await.unwrap().code), ALICE_CODE);
}

/// BindRequest's fields, with the code as raw bytes: so that a test can send a code that is
/// not UTF-8, which no `String` can hold.
#[derive(Clone, PartialEq, prost::Message)]
struct RawBind {
    #[prost(string, tag = "1")]
    mailbox: String,
    #[prost(string, tag = "2")]
    client: String,
    #[prost(bytes = "vec", tag = "3")]
    auth_code: Vec<u8>,
}

#[tokio::test]
async fn a_request_that_does_not_decode_is_invalid_argument_and_names_no_value() {
    let stack = Stack::start();
    let channel = tonic::transport::Channel::from_shared(stack.server.endpoint()).unwrap().connect().await.unwrap();
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {}", stack.admin_token).parse().unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let bind = |code: Vec<u8>| {
        let mut request =
            tonic::Request::new(RawBind { mailbox: ALICE.into(), client: "sender".into(), auth_code: code });
        request.metadata_mut().insert("authorization", token.clone());
        request
    };
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/vault.v1.AuthCodeVault/Bind");
    grpc.ready().await.unwrap();
    // A code that is not UTF-8 (its bytes spell a marker that must not be echoed).
    let mut code = b"MARKERcode".to_vec();
    code.push(0xff);
    let status = grpc
        .unary::<_, proto::BindResponse, _>(bind(code), path.clone(), tonic_prost::ProstCodec::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("auth_code"), "{}", status.message());
    assert!(!status.message().contains("MARKER"), "{}", status.message());
    // A well-formed code goes on to be judged (here: refused by the provider's format rule).
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, proto::BindResponse, _>(bind(b"short".to_vec()), path, tonic_prost::ProstCodec::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(!status.message().contains("decode"), "{}", status.message());
    assert!(!stack.server.log().contains("MARKER"), "the log holds the code");
}

//! Who may call: tokens and roles on every RPC, token lifecycle, TLS and mTLS, process hygiene.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use tonic::Code;
use vault_client::proto::{self, auth_code_vault_client::AuthCodeVaultClient};
use vault_client::{ConnectOptions, TlsOptions, VaultClient};

use crate::harness::pki::TestCa;
use crate::harness::vault::{path_str, run};
use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, Stack};

fn code_of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

/// Calls every RPC once with `c`; returns the status code of each, by name.
async fn every_rpc(c: &mut VaultClient, bind_client: &str) -> Vec<(&'static str, Code)> {
    let pair = |client: &str| (ALICE.to_owned(), client.to_owned());
    let (m, sender) = pair("sender");
    let raw = c.raw();
    vec![
        (
            "Bind",
            code_of(
                raw.bind(proto::BindRequest {
                    mailbox: BOB.into(),
                    client: bind_client.into(),
                    auth_code: BOB_CODE.into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "Rotate",
            code_of(
                raw.rotate(proto::RotateRequest {
                    mailbox: m.clone(),
                    client: sender.clone(),
                    new_auth_code: ALICE_CODE.into(),
                    expected_version: 0,
                    ..Default::default()
                })
                .await,
            ),
        ),
        ("Verify", code_of(raw.verify(proto::VerifyRequest { mailbox: m.clone(), client: sender.clone() }).await)),
        ("Reveal", code_of(raw.reveal(proto::RevealRequest { mailbox: m.clone(), client: sender.clone() }).await)),
        (
            "Reveal(other client)",
            code_of(raw.reveal(proto::RevealRequest { mailbox: m.clone(), client: "foxmail".into() }).await),
        ),
        (
            "GetCredential",
            code_of(
                raw.get_credential(proto::GetCredentialRequest { mailbox: m.clone(), client: sender.clone() }).await,
            ),
        ),
        (
            "GetCredential(other client)",
            code_of(
                raw.get_credential(proto::GetCredentialRequest { mailbox: m.clone(), client: "foxmail".into() }).await,
            ),
        ),
        ("ListCredentials", code_of(raw.list_credentials(proto::ListCredentialsRequest::default()).await)),
        ("ListUnusedClients", code_of(raw.list_unused_clients(proto::ListUnusedClientsRequest::default()).await)),
        ("ListAuditEvents", code_of(raw.list_audit_events(proto::ListAuditEventsRequest::default()).await)),
        (
            "Revoke",
            code_of(
                raw.revoke(proto::RevokeRequest {
                    mailbox: m,
                    client: "foxmail".into(),
                    reason: String::new(),
                    ..Default::default()
                })
                .await,
            ),
        ),
    ]
}

#[tokio::test]
async fn each_role_is_allowed_and_denied_on_each_rpc() {
    let mut stack = Stack::start();
    let metrics = ["--metrics-listen", "127.0.0.1:0", "--probe-burst", "100"].map(String::from);
    stack.restart_with(&metrics);
    let mut admin = stack.admin().await;
    admin.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    admin.bind(ALICE, "foxmail", SecretString::from(ALICE_CODE)).await.unwrap();
    let (ok, denied, unauth) = (Code::Ok, Code::PermissionDenied, Code::Unauthenticated);

    let mut sender = stack.as_client("sender").await;
    let got = every_rpc(&mut sender, "sender").await;
    let want = [denied, denied, denied, ok, denied, ok, denied, denied, denied, denied, denied];
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), want, "client:sender {got:?}");

    for token in [None, Some("Bearer nonsense"), Some("avt_123")] {
        let mut anon = stack.server.client_with(None).await;
        if let Some(t) = token {
            let channel =
                tonic::transport::Channel::from_shared(stack.server.endpoint()).unwrap().connect().await.unwrap();
            let value: tonic::metadata::AsciiMetadataValue = t.parse().unwrap();
            let mut raw = AuthCodeVaultClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", value.clone());
                Ok(r)
            });
            let c = code_of(raw.list_credentials(proto::ListCredentialsRequest::default()).await);
            assert_eq!(c, unauth, "{t}");
            continue;
        }
        let got = every_rpc(&mut anon, "sender").await;
        assert!(got.iter().all(|g| g.1 == unauth), "no token: {got:?}");
    }

    // Admin last: it revokes alice/foxmail at the end.
    let got = every_rpc(&mut admin, "thunderbird").await;
    let want = [ok, ok, ok, denied, denied, ok, ok, ok, ok, ok, ok];
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), want, "admin {got:?}");

    // Every refusal is counted, role refusals too: the client's 7 admin-only calls and 2 calls
    // for another client's pair, the admin's 2 Reveals.
    let text = stack.server.metrics_text();
    for (reason, n) in [("ADMIN_REQUIRED", 7), ("WRONG_CLIENT", 2), ("CLIENT_TOKEN_REQUIRED", 2)] {
        let line = format!("vault_auth_failures_total{{reason=\"{reason}\"}} {n}");
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_within_a_second_and_list_never_shows_tokens() {
    let stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let token = stack.client_token("sender");
    let mut c = stack.as_client("sender").await;
    c.reveal(ALICE, "sender").await.unwrap();

    let dir = path_str(&stack.data.dir);
    let list =
        run(&["token", "list", "--data-dir", dir, "--passphrase-file", path_str(&stack.data.passphrase_file)], &[]);
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    let id = format!("tk_{}", &token[4..16]);
    let row = text.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{id} missing:\n{text}"));
    assert!(row.contains("client:sender") && row.ends_with("active"), "{row}");
    assert!(text.contains("admin"));
    assert!(!text.contains(&token[16..]) && !text.contains(&stack.admin_token[16..]), "token list leaked a token");

    let out = run(&["token", "revoke", "--data-dir", dir, &id], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked_at = Instant::now();
    loop {
        match c.reveal(ALICE, "sender").await {
            Err(vault_client::Error::Unauthenticated { .. }) => break,
            Ok(_) => assert!(revoked_at.elapsed() < Duration::from_secs(1), "still accepted a second after revoke"),
            Err(e) => panic!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = run(&["token", "revoke", "--data-dir", dir, &id], &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already revoked"));
    let list = String::from_utf8_lossy(&run(&["token", "list", "--data-dir", dir], &[]).stdout).into_owned();
    assert!(list.lines().any(|l| l.starts_with(&id) && l.ends_with("revoked")), "{list}");
}

#[tokio::test]
async fn a_token_row_inserted_by_hand_is_refused() {
    let stack = Stack::start();
    // The attacker can write the database but does not know the passphrase: they copy a real
    // row's shape with a token of their own and a MAC they cannot compute.
    let forged = "avt_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let digest = {
        use sha2::Digest as _;
        sha2::Sha256::digest(forged.as_bytes()).to_vec()
    };
    let db = rusqlite::Connection::open(stack.data.db()).unwrap();
    let mac: Vec<u8> = db.query_row("SELECT mac FROM tokens LIMIT 1", [], |r| r.get(0)).unwrap();
    db.execute(
        "INSERT INTO tokens (id, role, digest, key_id, mac, created_at) VALUES ('tk_0123456789ab', 'admin', ?1, 1, ?2, 0)",
        rusqlite::params![digest, mac],
    )
    .unwrap();
    drop(db);
    let mut c = stack.server.client_with(Some(forged)).await;
    let err = c.list(&Default::default(), "").await.unwrap_err();
    assert!(matches!(err, vault_client::Error::Unauthenticated { .. }), "{err:?}");
    stack.server.wait_for_log("no valid MAC");
    // The real admin token still works.
    stack.admin().await.list(&Default::default(), "").await.unwrap();
}

#[tokio::test]
async fn sighup_reads_the_tls_files_again_and_files_that_do_not_load_keep_the_old() {
    let mut stack = Stack::start();
    let dir = stack.data.dir.parent().unwrap().to_owned();
    let (old_ca, new_ca) = (TestCa::new(&dir, "old-ca"), TestCa::new(&dir, "new-ca"));
    let (old, new) = (old_ca.issue(&dir, "old", &["localhost"]), new_ca.issue(&dir, "new", &["localhost"]));
    // The paths the server reads; a renewal writes new files over them.
    let (cert, key) = (dir.join("served.pem"), dir.join("served.key"));
    let install = |issued: &crate::harness::pki::Issued| {
        std::fs::copy(&issued.cert, &cert).unwrap();
        std::fs::copy(&issued.key, &key).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    };
    install(&old);
    stack.restart_with(&["--tls-cert".into(), path_str(&cert).into(), "--tls-key".into(), path_str(&key).into()]);
    let https = format!("https://localhost:{}", stack.server.addr.port());
    let lists_trusting = |ca: std::path::PathBuf| {
        let options = ConnectOptions {
            token: Some(SecretString::from(stack.admin_token.clone())),
            tls: Some(TlsOptions { ca_pem: Some(std::fs::read(ca).unwrap()), domain: None, identity: None }),
            ..Default::default()
        };
        let https = https.clone();
        async move {
            match VaultClient::connect(https, options).await {
                Ok(mut c) => c.list(&Default::default(), "").await.is_ok(),
                Err(_) => false,
            }
        }
    };
    assert!(lists_trusting(old_ca.cert.clone()).await && !lists_trusting(new_ca.cert.clone()).await);
    let hangup = || {
        let sent = std::process::Command::new("kill").args(["-HUP", &stack.server.pid().to_string()]).status();
        assert!(sent.unwrap().success());
    };

    // Renewed: new connections get the new certificate, and the server keeps serving.
    install(&new);
    hangup();
    stack.server.wait_for_log("SIGHUP: TLS files read again");
    assert!(lists_trusting(new_ca.cert.clone()).await, "the renewed certificate was not served");
    assert!(!lists_trusting(old_ca.cert.clone()).await);

    // A key that does not load: logged, and the renewed certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    hangup();
    stack.server.wait_for_log("SIGHUP: TLS files not reloaded");
    assert!(lists_trusting(new_ca.cert.clone()).await);
}

#[tokio::test]
async fn tls_and_mtls_on_the_listener() {
    let mut stack = Stack::start();
    let dir = stack.data.dir.parent().unwrap().to_owned();
    let ca = TestCa::new(&dir, "vault");
    let server_cert = ca.issue(&dir, "vault-server", &["localhost", "127.0.0.1"]);
    let clients_ca = TestCa::new(&dir, "clients");
    let client_cert = clients_ca.issue(&dir, "client", &["sync-worker"]);
    let tls_args = |mtls: bool| {
        let mut a: Vec<String> = vec![
            // The TLS grpcurl walk below probes bob three times in a row.
            "--probe-burst".into(),
            "10".into(),
            "--tls-cert".into(),
            path_str(&server_cert.cert).into(),
            "--tls-key".into(),
            path_str(&server_cert.key).into(),
        ];
        if mtls {
            a.extend(["--tls-client-ca".into(), path_str(&clients_ca.cert).into()]);
        }
        a
    };
    // A key others can read is served, with a warning that says what to do.
    std::fs::set_permissions(&server_cert.key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    stack.restart_with(&tls_args(false));
    stack.server.wait_for_log("chmod 600");
    let https = format!("https://localhost:{}", stack.server.addr.port());
    let ca_pem = std::fs::read(&ca.cert).unwrap();
    let tls = TlsOptions { ca_pem: Some(ca_pem.clone()), domain: Some("localhost".into()), identity: None };
    let options = |token: &str, tls: Option<TlsOptions>| ConnectOptions {
        token: Some(SecretString::from(token)),
        tls,
        ..Default::default()
    };
    let mut admin = VaultClient::connect(https.clone(), options(&stack.admin_token, Some(tls.clone()))).await.unwrap();
    admin.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    // Plaintext to a TLS listener fails.
    let mut plain = stack.server.client_with(Some(&stack.admin_token)).await;
    assert!(plain.list(&Default::default(), "").await.is_err());

    // grpcurl over TLS with -cacert, as the README shows: the admin lifecycle.
    let auth = format!("authorization: Bearer {}", stack.admin_token);
    let grpcurl_tls = |json: &str, method: &str| {
        let out = std::process::Command::new(crate::harness::dovecot::which("grpcurl"))
            .args(["-cacert", path_str(&ca.cert), "-authority", "localhost", "-H", &auth, "-d", json])
            .arg(stack.server.addr.to_string())
            .arg(format!("vault.v1.AuthCodeVault/{method}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{method}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pair = format!(r#"{{"mailbox":"{BOB}","client":"sender"}}"#);
    let bind = format!(r#"{{"mailbox":"{BOB}","client":"sender","auth_code":"{BOB_CODE}"}}"#);
    assert!(grpcurl_tls(&bind, "Bind").contains("PROBE_OUTCOME_ACCEPTED"));
    let rotate =
        format!(r#"{{"mailbox":"{BOB}","client":"sender","new_auth_code":"{BOB_CODE}","expected_version":1}}"#);
    assert!(grpcurl_tls(&rotate, "Rotate").contains("\"version\": \"2\""));
    assert!(grpcurl_tls(&pair, "Verify").contains("PROBE_OUTCOME_ACCEPTED"));
    assert!(grpcurl_tls("{}", "ListCredentials").contains(ALICE));
    assert!(grpcurl_tls(&pair, "Revoke").contains("CREDENTIAL_STATE_REVOKED"));

    // mTLS: no client certificate, no connection.
    stack.restart_with(&tls_args(true));
    let https = format!("https://localhost:{}", stack.server.addr.port());
    let no_cert = VaultClient::connect(https.clone(), options(&stack.admin_token, Some(tls.clone()))).await;
    let refused = match no_cert {
        Err(_) => true,
        Ok(mut c) => c.list(&Default::default(), "").await.is_err(),
    };
    assert!(refused, "mTLS listener accepted a client without a certificate");
    let with_cert = TlsOptions {
        identity: Some((std::fs::read(&client_cert.cert).unwrap(), std::fs::read(&client_cert.key).unwrap())),
        ..tls
    };
    let mut c = VaultClient::connect(https, options(&stack.admin_token, Some(with_cert))).await.unwrap();
    assert_eq!(c.list(&Default::default(), "").await.unwrap().items.len(), 1);
}

#[test]
fn the_server_process_cannot_dump_core() {
    let stack = Stack::start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", stack.server.pid())).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
}

#[tokio::test]
async fn two_authorization_headers_are_refused_whichever_comes_first() {
    let stack = Stack::start();
    stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    let (admin, sender) = (format!("Bearer {}", stack.admin_token), format!("bearer {}", stack.client_token("sender")));
    for (first, second) in [(&admin, &sender), (&sender, &admin)] {
        let channel = tonic::transport::Channel::from_shared(stack.server.endpoint()).unwrap().connect().await.unwrap();
        let values: [tonic::metadata::AsciiMetadataValue; 2] = [first.parse().unwrap(), second.parse().unwrap()];
        let mut raw = AuthCodeVaultClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            for v in &values {
                r.metadata_mut().append("authorization", v.clone());
            }
            Ok(r)
        });
        let status =
            raw.reveal(proto::RevealRequest { mailbox: ALICE.into(), client: "sender".into() }).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // One header, its scheme in lower case (RFC 9110: case-insensitive), is accepted.
    let channel = tonic::transport::Channel::from_shared(stack.server.endpoint()).unwrap().connect().await.unwrap();
    let value: tonic::metadata::AsciiMetadataValue = sender.parse().unwrap();
    let mut raw = AuthCodeVaultClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", value.clone());
        Ok(r)
    });
    let revealed = raw.reveal(proto::RevealRequest { mailbox: ALICE.into(), client: "sender".into() }).await.unwrap();
    assert_eq!(revealed.into_inner().auth_code, ALICE_CODE);
}

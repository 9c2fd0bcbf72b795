//! The provider registry from the operator's side: a TOML file, and the SMTP AUTH probe.

use secrecy::{ExposeSecret, SecretString};
use tonic::Code;
use tonic_types::StatusExt;
use vault_client::proto::{self, ProbeOutcome};

use crate::harness::vault::{path_str, run};
use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, PASSPHRASE, Stack};

const CAROL: &str = "carol@corp.example";
const CAROL_CODE: &str = "CANARYcarol00003";

fn write(stack: &Stack, name: &str, text: &str) -> String {
    let path = stack.data.dir.parent().unwrap().join(name);
    std::fs::write(&path, text).unwrap();
    path_str(&path).to_owned()
}

#[tokio::test]
async fn a_providers_file_adds_a_provider_whose_hosts_the_probe_uses() {
    let mut stack = Stack::start();
    stack.dovecot.set_codes(&[(ALICE, ALICE_CODE), (CAROL, CAROL_CODE)]);
    let file = write(
        &stack,
        "providers.toml",
        r#"
[corp]
name = "Corp Mail"
domains = ["corp.example"]
imap = "imap.corp.example:993"
smtp = "smtp.corp.example:465"
code_format = { kind = "alphanumeric", len = 16 }
settings_path = "Settings → Security → Client codes"
"#,
    );
    let mut c = stack.admin().await;
    // Without the file the domain is unknown.
    assert!(matches!(
        c.bind(CAROL, "sender", SecretString::from(CAROL_CODE)).await,
        Err(vault_client::Error::InvalidArgument { .. })
    ));

    stack.restart_with(&["--providers".into(), file]);
    let mut c = stack.admin().await;
    let r = c.bind(CAROL, "sender", SecretString::from(CAROL_CODE)).await.unwrap();
    assert_eq!(r.credential.provider, "corp");
    assert_eq!(r.probe.server, "imap.corp.example:993");
    let revealed = stack.as_client("sender").await.reveal(CAROL, "sender").await.unwrap();
    assert_eq!(revealed.code.expose_secret(), CAROL_CODE);
    assert_eq!((revealed.imap_host.as_str(), revealed.smtp_host.as_str()), ("imap.corp.example", "smtp.corp.example"));
    // The rejected hint names the file's settings path.
    let status = c
        .raw()
        .bind(proto::BindRequest {
            mailbox: CAROL.into(),
            client: "other".into(),
            auth_code: "WRONGwrong123456".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let hint = &status.get_details_error_info().unwrap().metadata["hint"];
    assert!(hint.contains("Corp Mail") && hint.contains("Settings → Security → Client codes"), "{hint}");
}

#[tokio::test]
async fn smtp_auth_535_is_rejected_with_the_advice_users_need() {
    let mut stack = Stack::start();
    // IMAP takes the code, SMTP does not (as when SMTP was left disabled in webmail).
    stack.dovecot.set_smtp_codes(&[(BOB, BOB_CODE)]);
    let file = write(&stack, "providers.toml", "[sina]\nsmtp_probe = true\n");
    stack.restart_with(&["--providers".into(), file.clone()]);
    let mut c = stack.admin().await;

    let req = proto::BindRequest {
        mailbox: ALICE.into(),
        client: "sender".into(),
        auth_code: ALICE_CODE.into(),
        ..Default::default()
    };
    let status = c.raw().bind(req).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "PROBE_REJECTED");
    assert_eq!(info.metadata["server"], "smtp.sina.com:465");
    assert!(info.metadata["server_response"].contains("535"), "{:?}", info.metadata);
    let hint = &info.metadata["hint"];
    assert!(hint.contains("use the 16-character client auth code, not the login password"), "{hint}");
    assert!(hint.contains("make sure IMAP/SMTP is enabled"), "{hint}");
    assert!(matches!(c.get(ALICE, "sender").await, Err(vault_client::Error::NotFound)));

    // Bob's code works on both: the report names both servers.
    let r = c.bind(BOB, "sender", SecretString::from(BOB_CODE)).await.unwrap();
    let probe = r.probe;
    assert_eq!(probe.outcome, ProbeOutcome::Accepted);
    assert_eq!(probe.server, "imap.sina.com:993, smtp.sina.com:465");

    // Once SMTP refuses the stored code, Verify says what most likely happened to it (the
    // Bind-time advice, "not the login password", was wrong: this code was accepted).
    stack.dovecot.set_smtp_codes(&[]);
    let status = c.raw().verify(proto::VerifyRequest { mailbox: BOB.into(), client: "sender".into() }).await;
    let report = status.unwrap().into_inner().probe.unwrap();
    assert_eq!((report.outcome(), report.server.as_str()), (ProbeOutcome::Rejected, "smtp.sina.com:465"));
    assert!(report.hint.contains("no longer accepts the stored code"), "{}", report.hint);

    // An SMTP server that cannot be reached is named, in the message and the hint (they named
    // IMAP's, which answered).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    stack.restart_with(&[
        "--providers".into(),
        file.clone(),
        "--probe-resolve".into(),
        format!("smtp.sina.com:465={closed}"),
    ]);
    let status = bob_bound_again_refused(&stack).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!((info.reason.as_str(), info.metadata["server"].as_str()), ("PROBE_UNREACHABLE", "smtp.sina.com:465"));
    assert!(info.metadata["hint"].contains("Could not reach smtp.sina.com:465"), "{:?}", info.metadata);
    assert!(status.message().starts_with("could not reach smtp.sina.com:465"), "{}", status.message());
    // One that takes the connection and never answers: the timeout names it too.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let resolve = format!("smtp.sina.com:465={}", silent.local_addr().unwrap());
    stack.restart_with(&[
        "--providers".into(),
        file,
        "--probe-resolve".into(),
        resolve,
        "--probe-timeout".into(),
        "3".into(),
    ]);
    let status = bob_bound_again_refused(&stack).await;
    let info = status.get_details_error_info().unwrap();
    assert_eq!((info.reason.as_str(), info.metadata["server"].as_str()), ("PROBE_TIMED_OUT", "smtp.sina.com:465"));
    assert!(info.metadata["hint"].starts_with("smtp.sina.com:465 did not answer in time"), "{:?}", info.metadata);
    drop(silent);

    // The server-wide flag turns SMTP probing on without a file.
    stack.restart_with(&["--probe-smtp".into()]);
    let mut c = stack.admin().await;
    let err = c.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap_err();
    assert!(
        matches!(err, vault_client::Error::ProbeRejected { ref hint, .. } if hint.contains("refused SMTP AUTH: use the")),
        "{err:?}"
    );
}

/// An implicit-TLS SMTP server with smtp.sina.com's test certificate that answers AUTH with
/// `auth` and never answers QUIT.
async fn fake_smtps(stack: &Stack, auth: &'static str) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let certs: Vec<_> =
        CertificateDer::pem_file_iter(&stack.pki.server_cert).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&stack.pki.server_key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let (read, mut write) = tokio::io::split(tls);
                let mut lines = tokio::io::BufReader::new(read).lines();
                let _ = write.write_all(b"220 smtp.sina.com ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let command = line.to_ascii_uppercase();
                    let reply = if command.starts_with("EHLO") {
                        "250-smtp.sina.com\r\n250 AUTH PLAIN LOGIN\r\n".to_owned()
                    } else if command.starts_with("AUTH") {
                        format!("{auth}\r\n")
                    } else if command.starts_with("QUIT") {
                        std::future::pending::<()>().await;
                        String::new()
                    } else {
                        "250 OK\r\n".to_owned()
                    };
                    let _ = write.write_all(reply.as_bytes()).await;
                    let _ = write.flush().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_smtp_verdict_stands_when_quit_stalls_and_a_refusal_not_about_the_code_is_no_verdict() {
    let mut stack = Stack::start();
    let file = write(&stack, "providers.toml", "[sina]\nsmtp_probe = true\n");
    let with_smtp_at = |addr: std::net::SocketAddr| {
        let resolve = format!("smtp.sina.com:465={addr}");
        vec![
            "--providers".into(),
            file.clone(),
            "--probe-resolve".into(),
            resolve,
            "--probe-timeout".into(),
            "3".into(),
        ]
    };
    // AUTH accepted, then QUIT never answered: it was TIMED_OUT, and the good code refused.
    stack.restart_with(&with_smtp_at(fake_smtps(&stack, "235 2.7.0 Authentication successful").await));
    let bound = stack.admin().await.bind(ALICE, "sender", SecretString::from(ALICE_CODE)).await.unwrap();
    assert_eq!(bound.probe.outcome, ProbeOutcome::Accepted, "{:?}", bound.probe);
    // A refusal that is not about the code ("IP blocked"): it was REJECTED, with "not the login
    // password" advice, and on Verify recorded as the provider refusing the code.
    stack.restart_with(&with_smtp_at(fake_smtps(&stack, "554 5.7.1 IP address blocked").await));
    let status = bob_bound_again_refused(&stack).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "PROBE_PROTOCOL_ERROR", "{info:?}");
    assert!(info.metadata["hint"].contains("nothing is concluded about the code"), "{:?}", info.metadata);
    let verified = stack.admin().await.verify(ALICE, "sender").await.unwrap();
    assert_eq!(verified.probe.outcome, ProbeOutcome::ProtocolError);
    let row = stack.admin().await.get(ALICE, "sender").await.unwrap();
    assert_eq!(row.last_probe_outcome, ProbeOutcome::Accepted, "an outage was recorded as a verdict");
}

/// A Bind of Bob's code for another client of his (IMAP takes it): its refusal.
async fn bob_bound_again_refused(stack: &Stack) -> tonic::Status {
    let req = proto::BindRequest {
        mailbox: BOB.into(),
        client: "other".into(),
        auth_code: BOB_CODE.into(),
        ..Default::default()
    };
    stack.admin().await.raw().bind(req).await.unwrap_err()
}

#[test]
fn a_bad_providers_file_stops_start_up_with_one_line_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = crate::harness::vault::DataDir::init(tmp.path(), PASSPHRASE);
    let file = tmp.path().join("providers.toml");
    std::fs::write(&file, "[corp]\nname = \"Corp\"\n").unwrap();
    let out = run(
        &[
            "serve",
            "--data-dir",
            path_str(&data.dir),
            "--passphrase-file",
            path_str(&data.passphrase_file),
            "--listen",
            "127.0.0.1:0",
            "--providers",
            path_str(&file),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(path_str(&file)) && lines[0].contains("needs `domains`"), "{}", lines[0]);
}

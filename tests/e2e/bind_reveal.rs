//! Bind → Reveal against a real IMAP server, and every way a Bind can be refused.

use secrecy::{ExposeSecret, SecretString};
use tonic::Code;
use tonic_types::StatusExt;
use vault_client::proto::{self, ProbeOutcome};

use crate::harness::{ALICE, ALICE_CODE, BOB, Stack, vault::VaultServer};

fn code(s: &str) -> SecretString {
    SecretString::from(s)
}

async fn raw_bind(server: &VaultServer, token: &str, mailbox: &str, client: &str, auth_code: &str) -> tonic::Status {
    let mut c = server.client_with(Some(token)).await;
    let req = proto::BindRequest {
        mailbox: mailbox.into(),
        client: client.into(),
        auth_code: auth_code.into(),
        ..Default::default()
    };
    c.raw().bind(req).await.expect_err("bind should fail")
}

#[tokio::test]
async fn bind_with_the_right_code_then_reveal_returns_it_also_after_restart() {
    let mut stack = Stack::start();
    let mut c = stack.admin().await;
    // Mixed case and spaces are canonicalised/stripped.
    let resp = c.bind(" Alice@Sina.com ", "Sender", code("CANA RYal ice0 0001")).await.unwrap();
    let cred = resp.credential;
    assert_eq!((cred.mailbox.as_str(), cred.client.as_str(), cred.provider.as_str()), (ALICE, "sender", "sina"));
    assert_eq!(cred.version, 1);
    assert_eq!(cred.state, proto::CredentialState::Active);
    let probe = resp.probe;
    assert_eq!(probe.outcome, ProbeOutcome::Accepted);
    assert_eq!(probe.server, "imap.sina.com:993");
    stack.dovecot.wait_for_log(&format!("Login: user=<{ALICE}>"));

    let revealed = stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap();
    assert_eq!(revealed.code.expose_secret(), ALICE_CODE);
    assert_eq!(revealed.version, 1);
    assert_eq!((revealed.imap_host.as_str(), revealed.imap_port), ("imap.sina.com", 993));
    assert_eq!((revealed.smtp_host.as_str(), revealed.smtp_port), ("smtp.sina.com", 465));

    // A second Bind of the active pair is refused before any probe.
    let err = raw_bind(&stack.server, &stack.admin_token, ALICE, "sender", ALICE_CODE).await;
    assert_eq!(err.code(), Code::AlreadyExists);

    stack.restart_server();
    let mut c = stack.admin().await;
    let revealed = stack.as_client("SENDER").await.reveal("ALICE@sina.com", "SENDER").await.unwrap();
    assert_eq!(revealed.code.expose_secret(), ALICE_CODE);
    let cred = c.get(ALICE, "sender").await.unwrap();
    assert_eq!(cred.last_probe_outcome, ProbeOutcome::Accepted);
    assert!(cred.created_at.is_some() && cred.last_verified_at.is_some());
}

#[tokio::test]
async fn bind_with_a_wrong_code_is_probe_rejected_and_stores_nothing() {
    let stack = Stack::start();
    let status = raw_bind(&stack.server, &stack.admin_token, ALICE, "sender", "WRONGwrong123456").await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "PROBE_REJECTED");
    assert_eq!(info.metadata["outcome"], "REJECTED");
    assert_eq!(info.metadata["server"], "imap.sina.com:993");
    assert!(info.metadata["server_response"].contains("AUTHENTICATIONFAILED"), "{:?}", info.metadata);
    assert!(info.metadata["hint"].contains("not the login password"), "{:?}", info.metadata);
    assert!(!status.message().contains("WRONGwrong"));

    let mut c = stack.admin().await;
    assert!(matches!(c.get(ALICE, "sender").await, Err(vault_client::Error::NotFound)));
    assert!(matches!(
        stack.as_client("sender").await.reveal(ALICE, "sender").await,
        Err(vault_client::Error::NotFound)
    ));
    let err = c.bind(ALICE, "sender", code("WRONGwrong123456")).await.unwrap_err();
    assert!(
        matches!(err, vault_client::Error::ProbeRejected { ref hint, .. } if hint.contains("client auth code")),
        "{err:?}"
    );
}

#[tokio::test]
async fn bind_with_a_code_of_the_wrong_format_is_invalid_and_never_reaches_the_server() {
    let stack = Stack::start();
    for bad in ["myLoginPassword", "abcd1234efgh567!", "abcd1234efgh56789"] {
        let status = raw_bind(&stack.server, &stack.admin_token, "short@sina.com", "sender", bad).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        let br = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(br.field_violations[0].field, "auth_code");
        assert!(status.message().contains("login password"), "{}", status.message());
        assert!(!status.message().contains(bad));
    }
    // A login Dovecot does see, to know its log is current before checking what it did not see.
    let mut c = stack.admin().await;
    c.bind(BOB, "sender", code(crate::harness::BOB_CODE)).await.unwrap();
    stack.dovecot.wait_for_log(&format!("Login: user=<{BOB}>"));
    let log = stack.dovecot.log();
    assert!(!log.contains("short@sina.com"), "Dovecot saw the refused mailbox:\n{log}");
    assert_eq!(log.matches("Login: user=").count(), 1, "exactly one login expected:\n{log}");
    assert!(!log.contains("auth failed"), "a refused code reached Dovecot:\n{log}");
}

#[tokio::test]
async fn malformed_identifiers_and_unknown_domains_are_invalid_arguments() {
    let stack = Stack::start();
    for (mailbox, client, field) in [
        ("no-at-sign", "sender", "mailbox"),
        ("a b@sina.com", "sender", "mailbox"),
        ("alice@sina.com", "bad client", "client"),
        ("alice@sina.com", "", "client"),
        ("alice@example.org", "sender", "mailbox"),
    ] {
        let status = raw_bind(&stack.server, &stack.admin_token, mailbox, client, ALICE_CODE).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{mailbox} {client}");
        let br = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(br.field_violations[0].field, field);
    }
    let status = raw_bind(&stack.server, &stack.admin_token, "alice@example.org", "sender", ALICE_CODE).await;
    assert!(status.message().contains("--providers"), "{}", status.message());
}

#[tokio::test]
async fn bind_when_the_server_is_unreachable_is_unavailable_and_stores_nothing() {
    let mut stack = Stack::start();
    stack.dovecot.stop();
    let status = raw_bind(&stack.server, &stack.admin_token, ALICE, "sender", ALICE_CODE).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "PROBE_UNREACHABLE");
    let mut c = stack.admin().await;
    assert!(matches!(c.get(ALICE, "sender").await, Err(vault_client::Error::NotFound)));
}

#[tokio::test]
async fn a_certificate_for_another_name_is_tls_failed() {
    let mut stack = Stack::start();
    // Point the VIP host at the same Dovecot: its certificate names imap.sina.com only. (One
    // server owns a data dir, so the stack's server is restarted with the extra flag.)
    let vip = format!("imap.vip.sina.com:993={}", stack.dovecot.imaps);
    // A port typed wrong would leave probes going to the real host: said at start.
    let typo = format!("imap.sina.com:143={}", stack.dovecot.imaps);
    stack.restart_with(&[
        "--probe-burst".into(),
        "100".into(),
        "--probe-resolve".into(),
        vip,
        "--probe-resolve".into(),
        typo,
    ]);
    stack.server.wait_for_log("--probe-resolve imap.sina.com:143 matches no server a provider is probed at, so it changes nothing (imap.sina.com is probed on port 993)");
    // The stack points smtp.sina.com at Dovecot too; without SMTP probes that changes nothing.
    stack.server.wait_for_log("--probe-resolve smtp.sina.com:465 matches no server a provider is probed at, so it changes nothing (SMTP is not probed there");
    let status = raw_bind(&stack.server, &stack.admin_token, "carol@vip.sina.com", "sender", ALICE_CODE).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "PROBE_TLS_FAILED");
    assert_eq!(info.metadata["server"], "imap.vip.sina.com:993");
    // A server did answer, with a certificate for another name (it said "no server answered").
    assert!(
        status.message().starts_with("the TLS handshake with imap.vip.sina.com:993 failed (TLS_FAILED)"),
        "{}",
        status.message()
    );
}

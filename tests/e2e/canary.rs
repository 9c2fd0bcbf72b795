//! No secret leaks, proven: every RPC and error path runs with canary codes, tokens and
//! passphrase while the server logs at TRACE; no log line, status message, status detail or
//! database byte may contain one.

use tonic::Code;
use vault_client::proto;

use crate::harness::{ALICE, ALICE_CODE, BOB, PASSPHRASE, Stack};

const NEW_CODE: &str = "CANARYrotated003";
const WRONG_CODE: &str = "CANARYwrong00004";
const BAD_FORMAT: &str = "CANARY-login-password!";
/// Token-shaped, never minted.
const FAKE_TOKEN: &str = "avt_cafecafecafe_CANARYtokenCANARYtokenCANARYtokenCANARYtok";

/// Everything a client saw of a failed call.
fn seen(status: &tonic::Status) -> String {
    format!("{} {:?} {:?}", status.message(), status.details(), status.metadata())
}

/// A response's Debug print (what a client might log), or the status.
fn dbg<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<String, tonic::Status> {
    r.map(|x| format!("{:?}", x.into_inner()))
}

fn secret_part(token: &str) -> &str {
    &token[16..]
}

/// The whole run under each log filter an operator (or an attacker with access to the flags)
/// might set: span filters and the protocol crates' own targets included.
macro_rules! canary_with_filter {
    ($($name:ident: $filter:expr,)*) => {$(
        #[tokio::test]
        async fn $name() {
            canaries_never_appear_in_logs_statuses_or_the_database($filter).await;
        }
    )*};
}

canary_with_filter! {
    canaries_at_trace: "trace",
    canaries_with_a_bind_span_filter: "[bind]=trace",
    canaries_with_an_rpc_field_span_filter: "[{rpc}]=trace",
    canaries_with_the_probe_at_trace: "vault_server::probe=trace",
    canaries_with_lettre_at_trace: "lettre=trace",
    canaries_with_h2_at_trace: "h2=trace",
}

async fn canaries_never_appear_in_logs_statuses_or_the_database(filter: &str) {
    let mut stack = Stack::start();
    // SMTP probes too, so that lettre has something to log.
    // `info` besides, so that the harness sees the "listening on" line.
    stack.restart_logging(&["--probe-burst".into(), "100".into(), "--probe-smtp".into()], &format!("info,{filter}"));
    stack.dovecot.set_extra_codes(&[(ALICE, NEW_CODE)]);
    let admin_token = stack.admin_token.clone();
    let mut admin = stack.admin().await;
    let mut sender = stack.as_client("sender").await;
    let mut foxmail = stack.as_client("foxmail").await;
    let mut fake = stack.server.client_with(Some(FAKE_TOKEN)).await;
    let mut outputs: Vec<String> = Vec::new();
    let mut expect = |r: Result<String, tonic::Status>, want: Code| match r {
        Ok(text) => {
            assert_eq!(want, Code::Ok, "{text}");
            outputs.push(text);
        }
        Err(s) => {
            assert_eq!(s.code(), want, "{s:?}");
            outputs.push(seen(&s));
        }
    };
    let bind = |code: &str, mailbox: &str| proto::BindRequest {
        mailbox: mailbox.into(),
        client: "sender".into(),
        auth_code: code.into(),
        ..Default::default()
    };
    let rotate = |code: &str, v: u64| proto::RotateRequest {
        mailbox: ALICE.into(),
        client: "sender".into(),
        new_auth_code: code.into(),
        expected_version: v,
        ..Default::default()
    };
    let pair = |client: &str| (ALICE.to_owned(), client.to_owned());
    expect(dbg(admin.raw().bind(bind(BAD_FORMAT, ALICE)).await), Code::InvalidArgument);
    expect(dbg(admin.raw().bind(bind(WRONG_CODE, ALICE)).await), Code::FailedPrecondition);
    expect(dbg(admin.raw().bind(bind(ALICE_CODE, "carol@example.org")).await), Code::InvalidArgument);
    expect(dbg(fake.raw().bind(bind(ALICE_CODE, ALICE)).await), Code::Unauthenticated);
    expect(dbg(sender.raw().bind(bind(ALICE_CODE, ALICE)).await), Code::PermissionDenied);
    expect(dbg(admin.raw().bind(bind(ALICE_CODE, ALICE)).await), Code::Ok);
    expect(dbg(admin.raw().bind(bind(ALICE_CODE, ALICE)).await), Code::AlreadyExists);
    expect(dbg(admin.raw().rotate(rotate(NEW_CODE, 9)).await), Code::Aborted);
    expect(dbg(admin.raw().rotate(rotate(WRONG_CODE, 1)).await), Code::FailedPrecondition);
    expect(dbg(admin.raw().rotate(rotate(BAD_FORMAT, 1)).await), Code::InvalidArgument);
    expect(dbg(admin.raw().rotate(rotate(NEW_CODE, 1)).await), Code::Ok);
    let (m, c) = pair("sender");
    expect(dbg(admin.raw().verify(proto::VerifyRequest { mailbox: m.clone(), client: c.clone() }).await), Code::Ok);
    let reveal = proto::RevealRequest { mailbox: m.clone(), client: c.clone() };
    let revealed = sender.raw().reveal(reveal.clone()).await.unwrap().into_inner();
    assert_eq!(revealed.auth_code, NEW_CODE);
    assert!(!format!("{revealed:?}").contains("CANARY"), "RevealResponse Debug leaks");
    expect(dbg(admin.raw().reveal(reveal.clone()).await), Code::PermissionDenied);
    expect(dbg(foxmail.raw().reveal(reveal.clone()).await), Code::PermissionDenied);
    expect(dbg(fake.raw().reveal(reveal.clone()).await), Code::Unauthenticated);
    let get = proto::GetCredentialRequest { mailbox: m.clone(), client: c.clone() };
    expect(dbg(admin.raw().get_credential(get).await), Code::Ok);
    expect(dbg(admin.raw().list_credentials(proto::ListCredentialsRequest::default()).await), Code::Ok);
    let revoke = proto::RevokeRequest {
        mailbox: m.clone(),
        client: c.clone(),
        reason: "canary run".into(),
        ..Default::default()
    };
    expect(dbg(admin.raw().revoke(revoke.clone()).await), Code::Ok);
    expect(dbg(admin.raw().revoke(revoke).await), Code::FailedPrecondition);
    expect(dbg(sender.raw().reveal(reveal).await), Code::FailedPrecondition);
    expect(dbg(admin.raw().rotate(rotate(NEW_CODE, 0)).await), Code::FailedPrecondition);
    expect(dbg(admin.raw().verify(proto::VerifyRequest { mailbox: m, client: c }).await), Code::FailedPrecondition);
    expect(
        dbg(admin.raw().get_credential(proto::GetCredentialRequest { mailbox: BOB.into(), client: "x".into() }).await),
        Code::NotFound,
    );

    assert!(stack.server.stop().success());
    let log = stack.server.log();
    if filter == "trace" {
        assert!(log.contains(" TRACE ") && log.contains(" DEBUG "), "expected a TRACE log:\n{log}");
    }
    let client_tokens = [stack.client_token("sender"), stack.client_token("foxmail")];
    let mut canaries: Vec<&str> = vec![
        ALICE_CODE,
        NEW_CODE,
        WRONG_CODE,
        BAD_FORMAT,
        PASSPHRASE,
        "CANARY",
        secret_part(&admin_token),
        secret_part(FAKE_TOKEN),
    ];
    canaries.extend(client_tokens.iter().map(|t| secret_part(t)));
    let files: Vec<(String, Vec<u8>)> = ["vault.db", "vault.db-wal", "vault.db-shm"]
        .iter()
        .filter_map(|n| std::fs::read(stack.data.dir.join(n)).ok().map(|b| ((*n).to_owned(), b)))
        .collect();
    for canary in canaries {
        assert!(!log.contains(canary), "log contains {canary}");
        for (i, out) in outputs.iter().enumerate() {
            assert!(!out.contains(canary), "call {i} showed {canary}: {out}");
        }
        for (name, bytes) in &files {
            assert!(!bytes.windows(canary.len()).any(|w| w == canary.as_bytes()), "{name} contains {canary}");
        }
    }
}

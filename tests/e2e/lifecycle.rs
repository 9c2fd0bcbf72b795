//! Rotate, Revoke and Verify against a real Dovecot, with its passdb changed as a user would
//! change codes in webmail.

use secrecy::{ExposeSecret, SecretString};
use tonic::Code;
use tonic_types::StatusExt;
use vault_client::CredentialFilter;
use vault_client::proto::{self, CredentialState, ProbeOutcome};

use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, Stack};

const ALICE_NEW: &str = "CANARYaliceNEW02";

fn code(s: &str) -> SecretString {
    SecretString::from(s)
}

fn rotate_req(new: &str, expected_version: u64) -> proto::RotateRequest {
    proto::RotateRequest {
        mailbox: ALICE.into(),
        client: "sender".into(),
        new_auth_code: new.into(),
        expected_version,
        ..Default::default()
    }
}

#[tokio::test]
async fn rotate_swaps_the_code_and_reports_that_the_old_one_still_works() {
    let stack = Stack::start();
    let mut c = stack.admin().await;
    c.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    // In webmail the user made a new code; the old one was not deleted yet.
    stack.dovecot.set_codes(&[(ALICE, ALICE_NEW), (BOB, BOB_CODE)]);
    stack.dovecot.set_extra_codes(&[(ALICE, ALICE_CODE)]);

    let r = c.raw().rotate(rotate_req(ALICE_NEW, 1)).await.unwrap().into_inner();
    let cred = r.credential.unwrap();
    assert_eq!(cred.version, 2);
    assert!(cred.rotated_at.is_some());
    assert_eq!(r.probe.unwrap().outcome(), ProbeOutcome::Accepted);
    let prev = r.previous_code_probe.expect("old code probed");
    assert_eq!(prev.outcome(), ProbeOutcome::Accepted);
    assert!(prev.hint.contains("Delete it in webmail") && prev.hint.contains("Client POP/IMAP/SMTP"), "{}", prev.hint);
    let revealed = stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap();
    assert_eq!((revealed.code.expose_secret(), revealed.version), (ALICE_NEW, 2));

    // Once the old code is deleted upstream, the next rotate says so.
    stack.dovecot.set_extra_codes(&[]);
    stack.dovecot.set_codes(&[(ALICE, ALICE_CODE)]);
    let r = c.raw().rotate(rotate_req(ALICE_CODE, 0)).await.unwrap().into_inner();
    assert_eq!(r.credential.unwrap().version, 3);
    let prev = r.previous_code_probe.unwrap();
    assert_eq!(prev.outcome(), ProbeOutcome::Rejected);
    assert!(prev.hint.contains("no longer accepts"), "{}", prev.hint);
}

#[tokio::test]
async fn a_failed_rotate_changes_nothing_and_the_old_code_keeps_working() {
    let stack = Stack::start();
    let mut c = stack.admin().await;
    c.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();

    let status = c.raw().rotate(rotate_req("WRONGwrong123456", 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "PROBE_REJECTED");
    let status = c.raw().rotate(rotate_req("too short", 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let revealed = stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap();
    assert_eq!((revealed.code.expose_secret(), revealed.version), (ALICE_CODE, 1));
    let v = c.raw().verify(proto::VerifyRequest { mailbox: ALICE.into(), client: "sender".into() }).await.unwrap();
    assert_eq!(v.into_inner().probe.unwrap().outcome(), ProbeOutcome::Accepted);
}

#[tokio::test]
async fn rotate_with_a_stale_version_is_aborted_before_any_probe() {
    let stack = Stack::start();
    let mut c = stack.admin().await;
    c.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    stack.dovecot.wait_for_log(&format!("Login: user=<{ALICE}>"));
    let logins = stack.dovecot.log().matches("Login: user=").count();
    let status = c.raw().rotate(rotate_req(ALICE_NEW, 7)).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("expected version 7"), "{}", status.message());
    // Bob's bind is a login we can wait for; alice's aborted rotate must not have logged in.
    c.bind(BOB, "sender", code(BOB_CODE)).await.unwrap();
    stack.dovecot.wait_for_log(&format!("Login: user=<{BOB}>"));
    assert_eq!(stack.dovecot.log().matches("Login: user=").count(), logins + 1);
    assert!(!stack.dovecot.log().contains("auth failed"));
}

#[tokio::test]
async fn revoke_commits_while_the_provider_is_down_and_the_pair_can_be_bound_again() {
    let mut stack = Stack::start();
    let mut c = stack.admin().await;
    c.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    c.bind(ALICE, "foxmail", code(ALICE_CODE)).await.unwrap();
    stack.dovecot.stop();

    let req = proto::RevokeRequest {
        mailbox: ALICE.into(),
        client: "sender".into(),
        reason: "laptop stolen".into(),
        ..Default::default()
    };
    let r = c.raw().revoke(req.clone()).await.unwrap().into_inner();
    let cred = r.credential.unwrap();
    assert_eq!(cred.state(), CredentialState::Revoked);
    assert_eq!(cred.revoke_reason, "laptop stolen");
    assert!(cred.revoked_at.is_some());
    let probe = r.probe.expect("probe attempted");
    assert_eq!(probe.outcome(), ProbeOutcome::Unreachable);
    // foxmail holds the same code: the hint must not say to delete it (it said so before).
    assert!(
        probe.hint.contains("also the code of client foxmail") && probe.hint.contains("do not delete"),
        "{}",
        probe.hint
    );

    // The tombstone answers Reveal with FAILED_PRECONDITION; the other client is untouched.
    let status = stack
        .as_client("sender")
        .await
        .raw()
        .reveal(proto::RevealRequest { mailbox: ALICE.into(), client: "sender".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(matches!(stack.as_client("sender").await.reveal(ALICE, "sender").await, Err(vault_client::Error::Revoked)));
    assert_eq!(
        stack.as_client("foxmail").await.reveal(ALICE, "foxmail").await.unwrap().code.expose_secret(),
        ALICE_CODE
    );
    // Revoking twice is refused; the tombstone stays.
    assert_eq!(c.raw().revoke(req).await.unwrap_err().code(), Code::FailedPrecondition);

    stack.dovecot.start_again();
    let r = c.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    let cred = r.credential;
    assert_eq!((cred.state, cred.version), (CredentialState::Active, 1));
    assert_eq!(stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap().code.expose_secret(), ALICE_CODE);
    // The new binding replaced the tombstone; the trail still says who revoked it, and why.
    let filter = vault_client::AuditFilter { mailbox: ALICE.into(), client: "sender".into(), ..Default::default() };
    let events = c.audit_events(&filter, "").await.unwrap().items;
    let revoke = events.iter().find(|e| e.rpc == "Revoke" && e.outcome == "OK").expect("no Revoke event");
    assert_eq!((revoke.reason.as_str(), revoke.caller_role.as_str()), ("laptop stolen", "admin"));
    assert!(events.iter().filter(|e| e.rpc != "Revoke").all(|e| e.reason.is_empty()), "{events:?}");
}

#[tokio::test]
async fn revoke_says_when_the_provider_still_accepts_the_destroyed_code() {
    let stack = Stack::start();
    let mut c = stack.admin().await;
    c.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    let probe = c.revoke(ALICE, "sender", "").await.unwrap().probe.unwrap();
    assert_eq!(probe.outcome, ProbeOutcome::Accepted);
    assert_eq!(probe.server_response, "OK Logged in", "not Dovecot's own reply");
    assert!(probe.hint.contains("Delete it in webmail"), "{}", probe.hint);
    // The audit trail keeps what that probe found: a second event, after the commit's.
    let filter = vault_client::AuditFilter { mailbox: ALICE.into(), ..Default::default() };
    let events = c.audit_all(&filter, 10).await.unwrap();
    let trail: Vec<(&str, &str, Option<ProbeOutcome>)> =
        events.iter().map(|e| (e.rpc.as_str(), e.outcome.as_str(), e.probe_outcome)).collect();
    assert_eq!(
        trail,
        [
            ("Revoke", "OLD_CODE_PROBED", Some(ProbeOutcome::Accepted)),
            ("Revoke", "OK", None),
            ("Bind", "OK", Some(ProbeOutcome::Accepted))
        ]
    );
}

#[tokio::test]
async fn verify_records_a_code_that_stopped_working_and_keeps_it() {
    let stack = Stack::start();
    let mut c = stack.admin().await;
    c.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    // The user changed the password in webmail: every client code died.
    stack.dovecot.set_codes(&[(ALICE, "SOMETHINGelse123")]);
    let v = c.verify(ALICE, "sender").await.unwrap();
    let probe = v.probe;
    assert_eq!(probe.outcome, ProbeOutcome::Rejected);
    assert!(probe.server_response.contains("AUTHENTICATIONFAILED"), "{}", probe.server_response);
    let cred = v.credential;
    assert_eq!((cred.state, cred.last_probe_outcome), (CredentialState::Active, ProbeOutcome::Rejected));
    let got = c.get(ALICE, "sender").await.unwrap();
    assert_eq!(got.last_probe_outcome, ProbeOutcome::Rejected);
    assert!(got.last_verified_at.unwrap() >= got.created_at.unwrap());
    assert_eq!(stack.as_client("sender").await.reveal(ALICE, "sender").await.unwrap().code.expose_secret(), ALICE_CODE);
}

#[tokio::test]
async fn concurrent_binds_and_rotates_of_one_pair_are_serialised() {
    let stack = Stack::start();
    let (mut a, mut b) = (stack.admin().await, stack.admin().await);
    let (r1, r2) = tokio::join!(a.bind(ALICE, "sender", code(ALICE_CODE)), b.bind(ALICE, "sender", code(ALICE_CODE)));
    let (ok, exists): (Vec<_>, Vec<_>) = [r1, r2].into_iter().partition(Result::is_ok);
    assert_eq!(ok.len(), 1);
    assert!(matches!(exists[0], Err(vault_client::Error::AlreadyBound)), "{exists:?}");

    stack.dovecot.set_extra_codes(&[(ALICE, ALICE_NEW)]);
    let (r1, r2) = tokio::join!(a.raw().rotate(rotate_req(ALICE_NEW, 1)), b.raw().rotate(rotate_req(ALICE_NEW, 1)));
    let codes: Vec<Code> =
        [&r1, &r2].iter().map(|r| r.as_ref().map_or_else(tonic::Status::code, |_| Code::Ok)).collect();
    assert!(codes.contains(&Code::Ok) && codes.contains(&Code::Aborted), "{codes:?}");
    assert_eq!(a.get(ALICE, "sender").await.unwrap().version, 2);
}

#[tokio::test]
async fn the_probe_budget_refuses_without_touching_the_network_and_cheap_checks_are_free() {
    let mut stack = Stack::start();
    stack.restart_with(&["--probe-burst".into(), "2".into(), "--probe-per-hour".into(), "1".into()]);
    let mut c = stack.admin().await;
    // Format errors cost nothing.
    for _ in 0..5 {
        assert!(matches!(
            c.bind(ALICE, "sender", code("password")).await,
            Err(vault_client::Error::InvalidArgument { .. })
        ));
    }
    c.bind(ALICE, "sender", code(ALICE_CODE)).await.unwrap();
    let verify = proto::VerifyRequest { mailbox: ALICE.into(), client: "sender".into() };
    c.raw().verify(verify.clone()).await.unwrap();
    // A stale expected_version is refused before the budget is consulted.
    assert_eq!(c.raw().rotate(rotate_req(ALICE_NEW, 9)).await.unwrap_err().code(), Code::Aborted);
    stack.dovecot.wait_for_log(&format!("Login: user=<{ALICE}>"));
    let logins = stack.dovecot.log().matches("Login: user=").count();

    let status = c.raw().verify(verify).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status.get_details_retry_info().expect("RetryInfo").retry_delay.expect("delay");
    assert!(retry.as_secs() > 3000 && retry.as_secs() <= 3600, "{retry:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "PROBE_BUDGET_EXHAUSTED");
    // Another mailbox has its own budget.
    c.bind(BOB, "sender", code(BOB_CODE)).await.unwrap();
    stack.dovecot.wait_for_log(&format!("Login: user=<{BOB}>"));
    assert_eq!(stack.dovecot.log().matches("Login: user=").count(), logins + 1, "{}", stack.dovecot.log());
}

#[tokio::test]
async fn list_credentials_pages_filters_and_never_shows_a_code() {
    let stack = Stack::start();
    let mut c = stack.admin().await;
    for (mailbox, client, secret) in
        [(ALICE, "sender", ALICE_CODE), (ALICE, "foxmail", ALICE_CODE), (BOB, "sender", BOB_CODE)]
    {
        c.bind(mailbox, client, code(secret)).await.unwrap();
    }
    c.revoke(ALICE, "foxmail", "unused").await.unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let req = proto::ListCredentialsRequest {
            include_revoked: true,
            page_size: 1,
            page_token: token,
            ..Default::default()
        };
        // Pages of one: the wire request (vault-client's pages take the server's size).
        let page = c.raw().list_credentials(req).await.unwrap().into_inner();
        assert!(page.credentials.len() <= 1);
        seen.extend(page.credentials.iter().map(|c| format!("{}/{}/{:?}", c.mailbox, c.client, c.state())));
        assert!(!format!("{page:?}").contains("CANARY"));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["alice@sina.com/foxmail/Revoked", "alice@sina.com/sender/Active", "bob@sina.com/sender/Active"]);

    let active =
        c.list(&CredentialFilter { mailbox: "ALICE@sina.com".into(), ..Default::default() }, "").await.unwrap();
    assert_eq!(active.items.len(), 1);
    assert!(active.next_page_token.is_empty());
    let senders = c.list(&CredentialFilter { client: "sender".into(), ..Default::default() }, "").await.unwrap();
    assert_eq!(senders.items.len(), 2);
    let bad = c.list(&CredentialFilter::default(), "garbage!").await;
    assert!(matches!(bad, Err(vault_client::Error::InvalidArgument { .. })));
    let too_big =
        c.raw().list_credentials(proto::ListCredentialsRequest { page_size: 5000, ..Default::default() }).await;
    assert_eq!(too_big.unwrap_err().code(), Code::InvalidArgument);
}

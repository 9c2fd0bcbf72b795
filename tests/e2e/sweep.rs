//! Scheduled verification against the real binary and Dovecot: a code deleted upstream becomes
//! REJECTED within a period and the review lists it; the sweep leaves admins their probe; one
//! host never sees sweep logins faster than --verify-rate (from Dovecot's own timestamps); a
//! restart does not re-probe everything at once.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use vault_client::proto::{self, ProbeOutcome};

use crate::harness::{ALICE, ALICE_CODE, BOB, BOB_CODE, Stack};

const CAROL: &str = "carol@sina.com";
const CAROL_CODE: &str = "CANARYcarol00003";
/// Short enough that the rate, not the spacing (period / 3 codes), paces the sweep.
const PERIOD_SECS: u64 = 3;

fn sweep_flags(period: &str, burst: &str) -> Vec<String> {
    ["--probe-burst", burst, "--verify-every", period, "--verify-rate", "0.5"].map(String::from).to_vec()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

async fn outcome_of(c: &mut vault_client::VaultClient, mailbox: &str) -> ProbeOutcome {
    c.get(mailbox, "sender").await.unwrap().last_probe_outcome
}

#[tokio::test]
async fn a_code_deleted_upstream_is_found_within_a_period_at_the_configured_rate() {
    let mut stack = Stack::start();
    stack.dovecot.set_codes(&[(ALICE, ALICE_CODE), (BOB, BOB_CODE), (CAROL, CAROL_CODE)]);
    let mut c = stack.admin().await;
    for (m, code) in [(ALICE, ALICE_CODE), (BOB, BOB_CODE), (CAROL, CAROL_CODE)] {
        c.bind(m, "sender", SecretString::from(code)).await.unwrap();
    }
    // Bob changed his password: every client code of his mailbox died upstream.
    stack.dovecot.set_codes(&[(ALICE, ALICE_CODE), (CAROL, CAROL_CODE)]);
    let started = unix_now();
    // A bucket of 10: the sweep may take 4 of each mailbox's 9 left after its Bind.
    stack.restart_with(&sweep_flags("3s", "10"));
    let mut c = stack.admin().await;

    // Oldest first at one login per 2 s: Bob (bound second) within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(2 * PERIOD_SECS + 6);
    while outcome_of(&mut c, BOB).await != ProbeOutcome::Rejected {
        assert!(Instant::now() < deadline, "bob's dead code was not found:\n{}", stack.server.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The review lists the dead code, and only it.
    let dead =
        proto::ListCredentialsRequest { last_probe_outcome: ProbeOutcome::Rejected.into(), ..Default::default() };
    let listed = c.raw().list_credentials(dead).await.unwrap().into_inner();
    let names: Vec<&str> = listed.credentials.iter().map(|x| x.mailbox.as_str()).collect();
    assert_eq!(names, [BOB]);
    let bob = c.get(BOB, "sender").await.unwrap();
    assert_eq!(bob.state, proto::CredentialState::Active, "a dead code stays stored for the admin to rotate");

    // The sweep left Bob's mailbox its reserve: an admin Verify still probes.
    let admin_window = unix_now();
    let verify = c.verify(BOB, "sender").await.expect("the sweep starved the admin's Verify");
    let admin_window = (admin_window, unix_now());
    let hint = verify.probe.hint;
    assert!(hint.contains("password was changed") && hint.contains("Rotate"), "{hint}");

    // Audited as a Verify by `system`.
    let audit =
        c.raw().list_audit_events(proto::ListAuditEventsRequest { caller: "system".into(), ..Default::default() });
    let events = audit.await.unwrap().into_inner().events;
    assert!(events.iter().any(|e| e.rpc == "Verify" && e.mailbox == BOB && e.outcome == "REJECTED"), "{events:?}");

    // Sweep logins after the restart, per host (all three mailboxes are on imap.sina.com). The
    // spacing alone would allow one a second.
    tokio::time::sleep(Duration::from_secs(3 * PERIOD_SECS)).await;
    let mut times: Vec<f64> = [ALICE, BOB, CAROL]
        .iter()
        .flat_map(|m| stack.dovecot.login_times(m))
        .filter(|t| *t > started && !(admin_window.0..=admin_window.1).contains(t))
        .collect();
    times.sort_by(f64::total_cmp);
    assert!(times.len() >= 5, "too few sweep logins: {times:?}\n{}", stack.dovecot.log());
    for pair in times.windows(2) {
        // --verify-rate 0.5: two seconds apart at least.
        let gap = pair[1] - pair[0];
        assert!(gap > 1.9, "sweep logins {gap:.3}s apart: {times:?}");
    }
}

#[tokio::test]
async fn a_restart_does_not_reprobe_codes_checked_within_the_period() {
    let mut stack = Stack::start();
    let mut c = stack.admin().await;
    for (m, code) in [(ALICE, ALICE_CODE), (BOB, BOB_CODE)] {
        c.bind(m, "sender", SecretString::from(code)).await.unwrap();
    }
    // Both codes were probed by their Bind just now: with a 30 s period neither is due yet, so a
    // sweep that forgot that (a burst at start-up) would log in at once.
    let restarted = unix_now();
    stack.restart_with(&sweep_flags("30s", "3"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let early = [ALICE, BOB].iter().flat_map(|m| stack.dovecot.login_times(m)).filter(|t| *t > restarted).count();
    assert_eq!(early, 0, "logins right after a restart:\n{}", stack.dovecot.log());
    assert!(stack.server.log().contains("verification sweep on"), "{}", stack.server.log());
}

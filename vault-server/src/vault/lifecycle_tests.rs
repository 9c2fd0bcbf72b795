//! Every branch of Bind, Rotate, Revoke, Verify and Reveal against a scripted prober: which
//! error, whether the provider was asked (and with which code), and what the store holds after.

use std::sync::Arc;

use super::testkit::{self, DAY, FakeClock, Scripted};
use super::{ProbeBudget, Vault, VaultError};
use crate::ids::{ClientId, Mailbox};
use crate::outcome::{ProbeFailure, ProbeOutcome};
use crate::secret::AuthCode;
use crate::store::{AuditEvent, CredentialState};

const OLD: &str = "abcd1234efgh5678";
const NEW: &str = "ijkl9012mnop3456";

fn pair() -> (Mailbox, ClientId) {
    (Mailbox::parse("alice@sina.com").unwrap(), ClientId::parse("sender").unwrap())
}

fn setup(script: &[ProbeOutcome], burst: u32) -> (tempfile::TempDir, Arc<Vault>, Arc<Scripted>) {
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let prober = Scripted::new(script);
    let (tmp, vault) = testkit::vault_with(clock, prober.clone(), ProbeBudget::new(burst, 1));
    (tmp, vault, prober)
}

async fn bind(vault: &Vault, code: &str) -> Result<(), VaultError> {
    let (m, c) = pair();
    vault.bind(&testkit::admin(), m, c, AuthCode::new(code), None).await.map(|_| ())
}

async fn rotate(vault: &Vault, code: &str, expected: Option<u64>) -> Result<super::Rotated, VaultError> {
    let (m, c) = pair();
    vault.rotate(&testkit::admin(), m, c, AuthCode::new(code), expected, None).await.map(|a| a.done().unwrap())
}

async fn revealed(vault: &Vault) -> Result<String, VaultError> {
    let (m, c) = pair();
    vault.reveal(&testkit::client("sender"), &m, &c).await.map(|r| r.code.expose().to_owned())
}

fn failure(e: &VaultError) -> Option<ProbeFailure> {
    match e {
        VaultError::ProbeFailed(f) => Some(f.failure()),
        _ => None,
    }
}

#[tokio::test]
async fn bind_checks_format_provider_and_state_before_any_probe() {
    let (_tmp, vault, prober) = setup(&[], 10);
    assert!(matches!(bind(&vault, "my login password").await, Err(VaultError::BadCodeFormat { .. })));
    let (_, c) = pair();
    let unknown =
        vault.bind(&testkit::admin(), Mailbox::parse("x@example.org").unwrap(), c, AuthCode::new(OLD), None).await;
    assert!(matches!(unknown, Err(VaultError::UnknownProvider { .. })));
    assert!(prober.tried().is_empty(), "a cheap check probed");
    bind(&vault, OLD).await.unwrap();
    assert!(matches!(bind(&vault, OLD).await, Err(VaultError::AlreadyExists)));
    assert_eq!(prober.tried(), [OLD], "the second Bind must not probe");
    assert_eq!(revealed(&vault).await.unwrap(), OLD);
}

#[tokio::test]
async fn a_refused_or_unreachable_bind_stores_nothing() {
    for (outcome, want) in [
        (ProbeOutcome::Rejected, ProbeFailure::Rejected),
        (ProbeOutcome::Unreachable, ProbeFailure::Unreachable),
        (ProbeOutcome::TlsFailed, ProbeFailure::TlsFailed),
        (ProbeOutcome::TimedOut, ProbeFailure::TimedOut),
        (ProbeOutcome::ProtocolError, ProbeFailure::ProtocolError),
    ] {
        let (_tmp, vault, _) = setup(&[outcome], 10);
        let err = bind(&vault, OLD).await.unwrap_err();
        assert_eq!(failure(&err), Some(want), "{err:?}");
        assert!(matches!(revealed(&vault).await, Err(VaultError::NotFound)));
        // The refusal is audited; nothing else is.
        let page = vault.audit_events(crate::store::AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].event.outcome, format!("PROBE_{}", outcome.as_str()));
    }
}

#[tokio::test]
async fn an_empty_budget_refuses_before_the_network() {
    let (_tmp, vault, prober) = setup(&[], 1);
    bind(&vault, OLD).await.unwrap();
    let (m, c) = pair();
    let err = vault.verify(&testkit::admin(), m, c).await.unwrap_err();
    assert!(matches!(err, VaultError::RateLimited { .. }), "{err:?}");
    assert_eq!(prober.tried().len(), 1);
}

#[tokio::test]
async fn rotate_branches() {
    let (_tmp, vault, prober) = setup(&[], 100);
    assert!(matches!(rotate(&vault, NEW, None).await, Err(VaultError::NotFound)));
    bind(&vault, OLD).await.unwrap();
    // Version conflict and bad format cost no probe.
    assert!(matches!(rotate(&vault, NEW, Some(7)).await, Err(VaultError::Aborted(_))));
    assert!(matches!(
        rotate(&vault, "short", Some(1)).await,
        Err(VaultError::BadCodeFormat { field: "new_auth_code", .. })
    ));
    // An empty code is called empty, not a login password.
    let empty = rotate(&vault, "   ", Some(1)).await.err();
    assert!(
        matches!(&empty, Some(VaultError::BadCodeFormat { hint, .. }) if hint.contains("empty") && !hint.contains("password")),
        "{empty:?}"
    );
    assert_eq!(prober.tried(), [OLD]);
    // A refused new code changes nothing.
    prober.then(&[ProbeOutcome::Rejected]);
    let err = rotate(&vault, NEW, Some(1)).await.unwrap_err();
    assert_eq!(failure(&err), Some(ProbeFailure::Rejected));
    assert_eq!(revealed(&vault).await.unwrap(), OLD);
    // Accepted: swapped in at version 2; then the old code is probed, and is still accepted.
    let r = rotate(&vault, NEW, Some(1)).await.unwrap();
    assert_eq!(r.row.version, 2);
    assert_eq!(r.previous_code_probe.map(|p| p.outcome), Some(ProbeOutcome::Accepted));
    assert_eq!(prober.tried(), [OLD, NEW, NEW, OLD]);
    assert_eq!(revealed(&vault).await.unwrap(), NEW);
}

#[tokio::test]
async fn rotate_with_the_budget_spent_after_the_new_code_skips_the_old_codes_probe() {
    let (_tmp, vault, prober) = setup(&[], 2);
    bind(&vault, OLD).await.unwrap();
    let r = rotate(&vault, NEW, None).await.unwrap();
    assert!(r.previous_code_probe.is_none());
    assert_eq!(prober.tried(), [OLD, NEW]);
}

#[tokio::test]
async fn revoke_commits_even_when_the_provider_is_down_and_only_once() {
    let (_tmp, vault, prober) = setup(&[], 100);
    let (m, c) = pair();
    let long = "x".repeat(501);
    assert!(matches!(
        vault.revoke(&testkit::admin(), m.clone(), c.clone(), &long, None).await,
        Err(VaultError::InvalidField { field: "reason", .. })
    ));
    assert!(matches!(
        vault.revoke(&testkit::admin(), m.clone(), c.clone(), "x", None).await,
        Err(VaultError::NotFound)
    ));
    bind(&vault, OLD).await.unwrap();
    prober.then(&[ProbeOutcome::Unreachable]);
    let r =
        vault.revoke(&testkit::admin(), m.clone(), c.clone(), "laptop retired", None).await.unwrap().done().unwrap();
    assert_eq!(r.row.state, CredentialState::Revoked);
    assert!(r.row.code.is_none(), "the ciphertext must be gone");
    assert_eq!(r.probe.map(|p| p.outcome), Some(ProbeOutcome::Unreachable));
    assert_eq!(prober.tried(), [OLD, OLD], "the destroyed code is probed after the commit");
    assert!(matches!(
        vault.revoke(&testkit::admin(), m.clone(), c.clone(), "again", None).await,
        Err(VaultError::Revoked)
    ));
    assert!(matches!(revealed(&vault).await, Err(VaultError::Revoked)));
    assert!(matches!(vault.verify(&testkit::admin(), m, c).await, Err(VaultError::Revoked)));
    assert!(matches!(rotate(&vault, NEW, None).await, Err(VaultError::Revoked)));
    // A revoked pair may be bound again.
    bind(&vault, NEW).await.unwrap();
    assert_eq!(revealed(&vault).await.unwrap(), NEW);
}

#[tokio::test]
async fn verify_records_a_rejection_and_keeps_the_code() {
    let (_tmp, vault, prober) = setup(&[], 100);
    bind(&vault, OLD).await.unwrap();
    prober.then(&[ProbeOutcome::Rejected]);
    let (m, c) = pair();
    let (row, report) = vault.verify(&testkit::admin(), m, c).await.unwrap();
    assert_eq!(report.outcome, ProbeOutcome::Rejected);
    assert_eq!(row.last_probe_outcome, Some(ProbeOutcome::Rejected));
    assert_eq!(row.last_verified_at, Some(1000 * DAY));
    assert_eq!(revealed(&vault).await.unwrap(), OLD, "a rejected code stays stored");
}

#[tokio::test]
async fn a_mailbox_imap_cannot_log_in_as_is_refused_before_any_probe() {
    let (_tmp, vault, prober) = setup(&[ProbeOutcome::Accepted], 3);
    let m = Mailbox::parse("\u{7528}\u{6237}@sina.com").unwrap();
    let err = vault.bind(&testkit::admin(), m, ClientId::parse("sender").unwrap(), AuthCode::new(OLD), None).await;
    assert!(
        matches!(&err, Err(VaultError::InvalidField { field: "mailbox", reason }) if reason.contains("ASCII")),
        "{err:?}"
    );
    assert!(prober.tried().is_empty(), "a probe was spent on it");
}

#[tokio::test]
async fn a_revoke_reason_that_holds_the_code_is_refused_and_nothing_changes() {
    let (_tmp, vault, _) = setup(&[ProbeOutcome::Accepted], 3);
    bind(&vault, OLD).await.unwrap();
    let token = crate::auth::Token::generate();
    // As pasted, in another case, spaced as Gmail shows codes, a token, and base64.
    for reason in [
        format!("pasted {OLD} by mistake"),
        format!("code was {}", OLD.to_uppercase()),
        "code was abcd 1234 efgh 5678".to_owned(),
        format!("leaked with {}", token.expose()),
        // Encoded, as an SMTP log shows AUTH LOGIN's argument.
        format!("seen in a log: {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, OLD)),
    ] {
        let (m, c) = pair();
        let err = vault.revoke(&testkit::admin(), m, c, &reason, None).await;
        assert!(matches!(&err, Err(VaultError::InvalidField { field: "reason", .. })), "{reason}: {:?}", err.err());
        assert_eq!(revealed(&vault).await.unwrap(), OLD, "the binding changed");
    }
}

#[tokio::test]
async fn rotating_to_the_stored_code_never_probes_it_as_the_previous_code() {
    let (_tmp, vault, prober) = setup(&[ProbeOutcome::Accepted, ProbeOutcome::Accepted, ProbeOutcome::Accepted], 5);
    bind(&vault, OLD).await.unwrap();
    let rotated = rotate(&vault, OLD, Some(1)).await.unwrap();
    assert!(rotated.previous_code_probe.is_none(), "its hint would say to delete the code in use");
    assert_eq!(prober.tried().len(), 2, "the bind's probe and the new code's, no other");
    assert_eq!(rotated.row.version, 2);
    assert_eq!(revealed(&vault).await.unwrap(), OLD);
}

#[tokio::test]
async fn a_revoked_code_another_client_of_the_mailbox_holds_is_not_to_be_deleted() {
    let (_tmp, vault, _) = setup(&[ProbeOutcome::Accepted, ProbeOutcome::Accepted, ProbeOutcome::Accepted], 5);
    let m = Mailbox::parse("alice@sina.com").unwrap();
    for c in ["sender", "thunderbird"] {
        vault.bind(&testkit::admin(), m.clone(), ClientId::parse(c).unwrap(), AuthCode::new(OLD), None).await.unwrap();
    }
    let thunderbird = ClientId::parse("thunderbird").unwrap();
    let revoked =
        vault.revoke(&testkit::admin(), m, thunderbird, "laptop retired", None).await.unwrap().done().unwrap();
    let hint = &revoked.probe.expect("the destroyed code was probed").hint;
    // It said "Delete it in webmail", which would break sender.
    assert!(hint.contains("also the code of client sender") && hint.contains("do not delete"), "{hint}");
    assert_eq!(revealed(&vault).await.unwrap(), OLD, "sender still works");
}

#[tokio::test]
async fn a_code_another_client_of_the_mailbox_holds_is_bound_with_a_hint_saying_so_once_accepted() {
    use ProbeOutcome::{Accepted, Rejected};
    let (_tmp, vault, _) = setup(&[Accepted, Rejected, Accepted, Accepted, Accepted, Accepted, Accepted, Accepted], 20);
    let m = Mailbox::parse("alice@sina.com").unwrap();
    let client = |c: &str| ClientId::parse(c).unwrap();
    vault.bind(&testkit::admin(), m.clone(), client("sender"), AuthCode::new(OLD), None).await.unwrap();
    // Refused by the provider: nothing about sender (that would test guesses for free).
    let refused = vault.bind(&testkit::admin(), m.clone(), client("thunderbird"), AuthCode::new(OLD), None).await;
    let Err(VaultError::ProbeFailed(failed)) = refused else { panic!("{:?}", refused.err()) };
    assert!(!failed.report().hint.contains("sender"), "{}", failed.report().hint);
    // Accepted: the hint names the client that holds it too.
    let bound = vault.bind(&testkit::admin(), m.clone(), client("thunderbird"), AuthCode::new(OLD), None).await;
    let (_, report) = bound.unwrap().done().unwrap();
    assert!(report.hint.contains("also the code of client sender"), "{}", report.hint);
    // Rotated to a code of its own: no such hint, nor when that code is given again (only
    // thunderbird holds it); rotated to sender's again: the hint.
    let tb = || client("thunderbird");
    for code in [NEW, NEW] {
        let own = vault.rotate(&testkit::admin(), m.clone(), tb(), AuthCode::new(code), None, None).await;
        let own = own.unwrap().done().unwrap();
        assert!(!own.probe.hint.contains("also the code"), "{}", own.probe.hint);
    }
    let back = vault.rotate(&testkit::admin(), m, tb(), AuthCode::new(OLD), None, None).await;
    let back = back.unwrap().done().unwrap();
    assert!(back.probe.hint.contains("also the code of client sender"), "{}", back.probe.hint);
}

#[tokio::test]
async fn a_pairs_lease_is_renewed_while_its_change_runs_and_never_taken_over() {
    use crate::store::PgStore;
    // Two replicas on one PostgreSQL database, leases of 900 ms.
    let url = crate::store::testdb::fresh_database().await;
    let (ring, material) = crate::store::contract::keyring();
    let store = PgStore::connect(&url, None).await.unwrap();
    store.create(&material, 0).await.unwrap();
    let store: Arc<dyn crate::store::Store> = Arc::new(store);
    let replica = || {
        let keys = Arc::new(crate::crypto::LiveKeyring::new(ring.clone()));
        let vault = Vault::new(
            store.clone(),
            keys,
            crate::provider::Registry::builtin(),
            Arc::new(testkit::AcceptAll),
            ProbeBudget::new(10, 10),
            Arc::new(FakeClock::default()),
            Arc::new(crate::metrics::Metrics::default()),
        );
        Arc::new(vault.with_lease_for(std::time::Duration::from_millis(900)))
    };
    let (a, b) = (replica(), replica());
    let held = a.lock_pair("a@sina.com", "x").await.unwrap();
    let waiter = tokio::spawn(async move {
        let _pair = b.lock_pair("a@sina.com", "x").await.unwrap();
        std::time::Instant::now()
    });
    // A slow change (a commit held up by a failover) outlives its first lease almost thrice.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(!waiter.is_finished(), "another replica took the pair while its change ran");
    let released = std::time::Instant::now();
    drop(held);
    assert!(waiter.await.unwrap() >= released);
}

#[tokio::test]
async fn a_replaced_code_its_own_pair_holds_again_is_not_to_be_deleted() {
    // A Rotate back to the replaced code (another admin's rollback) can commit while the
    // replaced code's probe runs: that probe must not say to delete the code the pair holds.
    let (_tmp, vault, _) = setup(&[ProbeOutcome::Accepted, ProbeOutcome::Accepted], 5);
    bind(&vault, OLD).await.unwrap();
    let (m, c) = pair();
    let provider = vault.provider_for_mailbox(&m).unwrap();
    let change = AuditEvent {
        at: 0,
        caller: "admin".into(),
        caller_role: "admin".into(),
        rpc: "Rotate".into(),
        mailbox: m.as_str().into(),
        client: c.as_str().into(),
        outcome: "OK".into(),
        probe_outcome: None,
        count: 1,
        first_at: 0,
        reason: String::new(),
    };
    let report = vault.probe_previous(&provider, &m, Some(AuthCode::new(OLD)), "previous code", &change).await;
    let hint = report.expect("probed").hint;
    assert!(hint.contains(&format!("also the code of client {}", c.as_str())), "{hint}");
}

#[tokio::test]
async fn a_mailbox_with_two_at_signs_is_never_bound_and_a_revoke_hint_names_the_revoked_code() {
    let (_tmp, vault, prober) = setup(&[ProbeOutcome::Accepted, ProbeOutcome::Accepted], 5);
    let twice = Mailbox::parse("a@b@sina.com").unwrap();
    let err = vault.bind(&testkit::admin(), twice, ClientId::parse("sender").unwrap(), AuthCode::new(OLD), None).await;
    assert!(matches!(&err, Err(VaultError::InvalidField { field: "mailbox", .. })), "{:?}", err.err());
    assert!(prober.tried().is_empty(), "a probe was spent on it");
    // A Revoke's probe is of the code it destroyed: not called "the previous code".
    bind(&vault, OLD).await.unwrap();
    let (m, c) = pair();
    let revoked = vault.revoke(&testkit::admin(), m, c, "", None).await.unwrap().done().unwrap();
    let hint = revoked.probe.expect("probed").hint;
    assert!(hint.contains("revoked code") && !hint.contains("previous"), "{hint}");
}

#[tokio::test]
async fn when_the_other_clients_codes_cannot_be_read_the_hint_never_just_says_delete() {
    let (tmp, vault, _) = setup(&[ProbeOutcome::Accepted, ProbeOutcome::Accepted, ProbeOutcome::Accepted], 5);
    let m = Mailbox::parse("alice@sina.com").unwrap();
    vault
        .bind(&testkit::admin(), m.clone(), ClientId::parse("sender").unwrap(), AuthCode::new(NEW), None)
        .await
        .unwrap();
    vault
        .bind(&testkit::admin(), m.clone(), ClientId::parse("other").unwrap(), AuthCode::new(OLD), None)
        .await
        .unwrap();
    // sender's row no longer opens: whether it holds the revoked code cannot be told.
    let db = rusqlite::Connection::open(tmp.path().join("vault.db")).unwrap();
    db.execute("UPDATE credentials SET ciphertext = zeroblob(length(ciphertext)) WHERE client = 'sender'", []).unwrap();
    drop(db);
    let other = ClientId::parse("other").unwrap();
    let revoked = vault.revoke(&testkit::admin(), m, other, "", None).await.unwrap().done().unwrap();
    let hint = revoked.probe.expect("probed").hint;
    assert!(hint.contains("could not be checked"), "{hint}");
}

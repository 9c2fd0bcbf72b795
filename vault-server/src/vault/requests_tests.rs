//! Idempotent writes against a scripted prober: a retry with the same request id is answered
//! from the record without a probe; another request under the same id is refused; failures,
//! other callers, expired ids and retired keys run again.

use std::sync::Arc;

use super::testkit::{self, DAY, FakeClock, Scripted};
use super::{Answer, ProbeBudget, REQUESTS_KEPT_FOR, Vault, VaultError};
use crate::caller::{Caller, Role};
use crate::ids::{ClientId, Mailbox, RequestId};
use crate::outcome::ProbeOutcome::{Accepted, Rejected};
use crate::proto;
use crate::secret::AuthCode;
use crate::store::CredentialState;

const OLD: &str = "abcd1234efgh5678";
const NEW: &str = "ijkl9012mnop3456";

fn pair() -> (Mailbox, ClientId) {
    (Mailbox::parse("alice@sina.com").unwrap(), ClientId::parse("sender").unwrap())
}

fn id(raw: &str) -> Option<RequestId> {
    RequestId::parse(raw).unwrap()
}

fn setup(script: &[crate::outcome::ProbeOutcome]) -> (tempfile::TempDir, Arc<Vault>, Arc<Scripted>, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let prober = Scripted::new(script);
    let (tmp, vault) = testkit::vault_with(clock.clone(), prober.clone(), ProbeBudget::new(100, 100));
    (tmp, vault, prober, clock)
}

async fn bind(vault: &Vault, who: &Caller, code: &str, request: &str) -> Result<Answer<u64>, VaultError> {
    let (m, c) = pair();
    let answer = vault.bind(who, m, c, AuthCode::new(code), id(request)).await?;
    Ok(match answer {
        Answer::Done((row, _)) => Answer::Done(row.version),
        Answer::Replayed(bytes) => Answer::Replayed(bytes),
    })
}

fn replayed<M: prost::Message + Default>(a: Answer<impl std::fmt::Debug>) -> M {
    match a {
        Answer::Replayed(bytes) => M::decode(bytes.as_slice()).unwrap(),
        Answer::Done(d) => panic!("ran again: {d:?}"),
    }
}

#[tokio::test]
async fn a_retried_bind_gets_the_first_answer_without_a_probe() {
    let (_tmp, vault, prober, _) = setup(&[]);
    let admin = testkit::admin();
    assert!(matches!(bind(&vault, &admin, OLD, "req-1").await.unwrap(), Answer::Done(1)));
    let again: proto::BindResponse = replayed(bind(&vault, &admin, OLD, "req-1").await.unwrap());
    let credential = again.credential.unwrap();
    assert_eq!((credential.mailbox.as_str(), credential.version), ("alice@sina.com", 1));
    assert_eq!(again.probe.unwrap().outcome(), proto::ProbeOutcome::Accepted);
    assert_eq!(prober.tried(), [OLD], "the retry probed");
    // Without the id the same call is what it always was.
    assert!(matches!(bind(&vault, &admin, OLD, "").await, Err(VaultError::AlreadyExists)));
}

#[tokio::test]
async fn the_same_id_for_another_request_is_refused_and_changes_nothing() {
    let (_tmp, vault, prober, _) = setup(&[]);
    let admin = testkit::admin();
    bind(&vault, &admin, OLD, "req-1").await.unwrap();
    let other_code = bind(&vault, &admin, NEW, "req-1").await;
    assert!(matches!(other_code, Err(VaultError::InvalidField { field: "request_id", .. })), "{other_code:?}");
    let (m, c) = pair();
    let other_rpc = vault.revoke(&admin, m.clone(), c.clone(), "", id("req-1")).await;
    assert!(matches!(other_rpc, Err(VaultError::InvalidField { field: "request_id", .. })), "{other_rpc:?}");
    let other_pair =
        vault.bind(&admin, Mailbox::parse("bob@sina.com").unwrap(), c.clone(), AuthCode::new(OLD), id("req-1"));
    assert!(matches!(other_pair.await, Err(VaultError::InvalidField { field: "request_id", .. })));
    assert_eq!(prober.tried(), [OLD]);
    assert_eq!(vault.get(&m, &c).await.unwrap().state, CredentialState::Active);
}

#[tokio::test]
async fn a_failed_call_is_not_remembered_and_ids_are_per_caller() {
    let (_tmp, vault, prober, _) = setup(&[Rejected, Accepted]);
    let admin = testkit::admin();
    assert!(matches!(bind(&vault, &admin, OLD, "req-1").await, Err(VaultError::ProbeFailed(_))));
    assert!(matches!(bind(&vault, &admin, OLD, "req-1").await.unwrap(), Answer::Done(1)), "the retry must run");
    let other = Caller { token_id: "tk_other_admin".into(), role: Role::Admin };
    assert!(matches!(bind(&vault, &other, OLD, "req-1").await, Err(VaultError::AlreadyExists)));
    assert_eq!(prober.tried(), [OLD, OLD]);
}

#[tokio::test]
async fn a_retried_rotate_does_not_rotate_twice_and_carries_the_old_code_probe() {
    let (_tmp, vault, prober, _) = setup(&[]);
    let admin = testkit::admin();
    bind(&vault, &admin, OLD, "").await.unwrap();
    let (m, c) = pair();
    let rotate = || vault.rotate(&admin, m.clone(), c.clone(), AuthCode::new(NEW), Some(1), id("rot-1"));
    let first = rotate().await.unwrap().done().unwrap();
    assert_eq!(first.row.version, 2);
    let again: proto::RotateResponse = replayed(rotate().await.unwrap());
    assert_eq!(again.credential.unwrap().version, 2);
    assert_eq!(again.previous_code_probe.map(|p| p.outcome()), Some(proto::ProbeOutcome::Accepted));
    assert_eq!(prober.tried(), [OLD, NEW, OLD], "bind, rotate, old-code probe; nothing for the retry");
    assert_eq!(vault.get(&m, &c).await.unwrap().version, 2);
}

#[tokio::test]
async fn a_retried_revoke_answers_the_revoke_even_after_a_new_bind() {
    let (_tmp, vault, _, _) = setup(&[]);
    let admin = testkit::admin();
    bind(&vault, &admin, OLD, "").await.unwrap();
    let (m, c) = pair();
    vault.revoke(&admin, m.clone(), c.clone(), "laptop retired", id("rev-1")).await.unwrap().done().unwrap();
    bind(&vault, &admin, NEW, "").await.unwrap();
    let again: proto::RevokeResponse =
        replayed(vault.revoke(&admin, m.clone(), c.clone(), "laptop retired", id("rev-1")).await.unwrap());
    assert_eq!(again.credential.unwrap().state(), proto::CredentialState::Revoked);
    assert!(again.probe.is_some(), "the follow-up probe is part of the remembered answer");
    assert_eq!(vault.get(&m, &c).await.unwrap().state, CredentialState::Active, "the retry revoked the new code");
}

#[tokio::test]
async fn ids_are_forgotten_after_a_day_and_at_a_key_rotation() {
    let (_tmp, vault, prober, clock) = setup(&[]);
    let admin = testkit::admin();
    let (m, c) = pair();
    bind(&vault, &admin, OLD, "req-1").await.unwrap();
    vault.revoke(&admin, m.clone(), c.clone(), "", None).await.unwrap();
    clock.set(1000 * DAY + i64::try_from(REQUESTS_KEPT_FOR.as_millis()).unwrap() + 1);
    assert!(matches!(bind(&vault, &admin, OLD, "req-1").await.unwrap(), Answer::Done(1)), "an expired id ran");

    // A rotation deletes the key the record was fingerprinted under, and the record with it.
    vault.revoke(&admin, m.clone(), c.clone(), "", id("rev-2")).await.unwrap();
    vault.rotate_data_key(Arc::new(admin.clone())).await.unwrap();
    bind(&vault, &admin, OLD, "").await.unwrap();
    let after = vault.revoke(&admin, m.clone(), c.clone(), "", id("rev-2")).await.unwrap();
    assert!(after.done().is_some(), "the id outlived its key");
    assert_eq!(prober.tried().len(), 6, "{:?}", prober.tried());
}

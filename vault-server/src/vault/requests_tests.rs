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
async fn ids_are_forgotten_after_a_day() {
    let (_tmp, vault, prober, clock) = setup(&[]);
    let admin = testkit::admin();
    let (m, c) = pair();
    bind(&vault, &admin, OLD, "req-1").await.unwrap();
    vault.revoke(&admin, m.clone(), c.clone(), "", None).await.unwrap();
    clock.set(1000 * DAY + i64::try_from(REQUESTS_KEPT_FOR.as_millis()).unwrap() + 1);
    assert!(matches!(bind(&vault, &admin, OLD, "req-1").await.unwrap(), Answer::Done(1)), "an expired id ran");
    assert_eq!(prober.tried().len(), 3, "{:?}", prober.tried());
}

#[tokio::test]
async fn after_a_key_rotation_a_retry_is_refused_never_run_twice() {
    let (_tmp, vault, prober, _) = setup(&[]);
    let admin = testkit::admin();
    let (m, c) = pair();
    bind(&vault, &admin, OLD, "").await.unwrap();
    vault.revoke(&admin, m.clone(), c.clone(), "", id("rev-1")).await.unwrap();
    vault.rotate_data_key(Arc::new(admin.clone())).await.unwrap();
    bind(&vault, &admin, NEW, "").await.unwrap();
    let tried = prober.tried().len();
    let retry = vault.revoke(&admin, m.clone(), c.clone(), "", id("rev-1")).await;
    assert!(matches!(retry, Err(VaultError::RequestUnverifiable)), "{retry:?}");
    assert_eq!(vault.get(&m, &c).await.unwrap().state, CredentialState::Active, "the retry revoked the new code");
    assert_eq!(prober.tried().len(), tried);
}

#[tokio::test]
async fn an_edited_remembered_answer_is_refused() {
    let (tmp, vault, _, _) = setup(&[]);
    let admin = testkit::admin();
    bind(&vault, &admin, OLD, "req-1").await.unwrap();
    let db = rusqlite::Connection::open(tmp.path().join("vault.db")).unwrap();
    // Someone with the file flips the answer's probe outcome (field 2.1: ACCEPTED=1 to REJECTED=2).
    let answer: Vec<u8> = db.query_row("SELECT answer FROM requests", [], |r| r.get(0)).unwrap();
    let mut edited: proto::BindResponse = prost::Message::decode(answer.as_slice()).unwrap();
    edited.probe.as_mut().unwrap().outcome = proto::ProbeOutcome::Rejected.into();
    db.execute("UPDATE requests SET answer = ?1", [prost::Message::encode_to_vec(&edited)]).unwrap();
    let retry = bind(&vault, &admin, OLD, "req-1").await;
    assert!(matches!(retry, Err(VaultError::RequestDamaged)), "{retry:?}");
    // A row moved to another id is refused the same way.
    db.execute("UPDATE requests SET answer = ?1, request_id = 'req-2'", [answer]).unwrap();
    assert!(matches!(bind(&vault, &admin, OLD, "req-2").await, Err(VaultError::RequestDamaged)));
}

#[tokio::test]
async fn one_id_on_two_pairs_at_once_gives_one_change_and_one_refusal() {
    let (_tmp, vault, _, _) = setup(&[]);
    let admin = testkit::admin();
    let c = ClientId::parse("sender").unwrap();
    let on =
        |mailbox: &str| vault.bind(&admin, Mailbox::parse(mailbox).unwrap(), c.clone(), AuthCode::new(OLD), id("same"));
    let (a, b) = tokio::join!(on("alice@sina.com"), on("bob@sina.com"));
    let refused = |r: &Result<_, VaultError>| matches!(r, Err(VaultError::InvalidField { field: "request_id", .. }));
    assert!(a.is_ok() != b.is_ok() && (refused(&a) || refused(&b)), "{a:?} {b:?}");
    let bound = vault.list(crate::store::ListQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(bound.items.len(), 1, "both pairs were bound under one id");
}

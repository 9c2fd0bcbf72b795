//! The scheduled verification against a scripted prober and a fake clock: what is due, the
//! admins' reserve of the budget, and recording as a Verify by `system`.

use std::sync::Arc;

use super::testkit::{self, DAY, FakeClock, Scripted};
use super::{ProbeBudget, Vault};
use crate::ids::{ClientId, Mailbox};
use crate::outcome::ProbeOutcome::{Accepted, Rejected};
use crate::secret::AuthCode;
use crate::store::{AuditQuery, ListQuery};

const CODE: &str = "abcd1234efgh5678";

fn ids(m: &str) -> (Mailbox, ClientId) {
    (Mailbox::parse(m).unwrap(), ClientId::parse("sender").unwrap())
}

async fn bind(vault: &Vault, m: &str) {
    let (m, c) = ids(m);
    vault.bind(&testkit::admin(), m, c, AuthCode::new(CODE), None).await.unwrap();
}

#[tokio::test]
async fn a_due_code_is_verified_as_system_and_a_rejected_one_is_listed_with_a_provider_hint() {
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let prober = Scripted::new(&[Accepted, Rejected]);
    let (_tmp, vault) = testkit::vault_with(clock.clone(), prober.clone(), ProbeBudget::new(3, 10));
    bind(&vault, "alice@sina.com").await;
    let (m, c) = ids("alice@sina.com");
    // Bound (and probed) at 1000 days: not due before a day has passed.
    assert!(vault.verify_due(m.clone(), c.clone(), 1000 * DAY).await.unwrap().is_none());
    clock.set(1001 * DAY);
    let report = vault.verify_due(m.clone(), c.clone(), 1001 * DAY - 1).await.unwrap().unwrap();
    assert_eq!(report.outcome, Rejected);
    assert!(report.hint.contains("password was changed") && report.hint.contains("Rotate"), "{}", report.hint);
    let dead = ListQuery { last_probe_outcome: Some(Rejected), limit: 10, ..ListQuery::default() };
    let page = vault.list(dead).await.unwrap();
    assert_eq!(page.items.iter().map(|r| r.mailbox.as_str()).collect::<Vec<_>>(), ["alice@sina.com"]);
    let unchecked = ListQuery { verified_before: Some(1001 * DAY), limit: 10, ..ListQuery::default() };
    assert!(vault.list(unchecked).await.unwrap().items.is_empty(), "just verified");
    let events = vault.audit_events(AuditQuery { limit: 1, ..AuditQuery::default() }).await.unwrap();
    let e = &events.items[0].event;
    assert_eq!((e.rpc.as_str(), e.caller.as_str(), e.caller_role.as_str()), ("Verify", "system", "system"));
    assert_eq!(e.outcome, "REJECTED");
    // Verified now: not due again until the next period.
    assert!(vault.verify_due(m, c, 1001 * DAY - 1).await.unwrap().is_none());
    assert_eq!(prober.tried().len(), 2);
}

#[tokio::test]
async fn the_sweep_never_takes_the_admins_last_probe() {
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let prober = Scripted::new(&[Accepted; 8]);
    let (_tmp, vault) = testkit::vault_with(clock.clone(), prober, ProbeBudget::new(3, 1));
    bind(&vault, "alice@sina.com").await; // 2 of 3 left
    let (m, c) = ids("alice@sina.com");
    let mut done = 0;
    for day in 1..=5 {
        clock.set((1000 + day) * DAY);
        if vault.verify_due(m.clone(), c.clone(), (1000 + day) * DAY - 1).await.is_ok() {
            done += 1;
        }
    }
    assert_eq!(done, 1, "the sweep took more than the bucket's share");
    vault.verify(&testkit::admin(), m, c).await.expect("the admin's Verify found no probe left");
}

#[tokio::test]
async fn an_outage_neither_clears_a_rejected_code_nor_counts_as_a_check() {
    use crate::outcome::ProbeOutcome::{TimedOut, Unreachable};
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let prober = Scripted::new(&[Accepted, Rejected, Unreachable, TimedOut]);
    let (_tmp, vault) = testkit::vault_with(clock.clone(), prober, ProbeBudget::new(10, 10));
    bind(&vault, "alice@sina.com").await;
    let (m, c) = ids("alice@sina.com");
    clock.set(1001 * DAY);
    assert_eq!(vault.verify_due(m.clone(), c.clone(), 1001 * DAY - 1).await.unwrap().unwrap().outcome, Rejected);
    // The provider cannot be reached (or the path to it was cut) for the next sweep and Verify.
    clock.set(1002 * DAY);
    let report = vault.verify_due(m.clone(), c.clone(), 1002 * DAY - 1).await.unwrap().unwrap();
    assert_eq!(report.outcome, Unreachable);
    let (row, report) = vault.verify(&testkit::admin(), m, c).await.unwrap();
    assert_eq!(report.outcome, TimedOut);
    assert_eq!((row.last_probe_outcome, row.last_verified_at), (Some(Rejected), Some(1001 * DAY)));
    let dead = ListQuery { last_probe_outcome: Some(Rejected), limit: 10, ..ListQuery::default() };
    assert_eq!(vault.list(dead).await.unwrap().items.len(), 1, "the outage cleared the dead code");
    let unchecked = ListQuery { verified_before: Some(1002 * DAY), limit: 10, ..ListQuery::default() };
    assert_eq!(vault.list(unchecked).await.unwrap().items.len(), 1, "the outage passed for a check");
    // Both are in the audit trail all the same.
    let events = vault.audit_events(AuditQuery { limit: 2, ..AuditQuery::default() }).await.unwrap();
    let outcomes: Vec<&str> = events.items.iter().map(|e| e.event.outcome.as_str()).collect();
    assert_eq!(outcomes, ["TIMED_OUT", "UNREACHABLE"]);
}

#[tokio::test(start_paused = true)]
async fn rows_that_cannot_be_probed_never_keep_the_sweep_from_the_others() {
    use super::sweep::{Sweep, SweepSettings};
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let prober = Scripted::new(&[Accepted, Accepted]);
    let (tmp, vault) = testkit::vault_with(clock.clone(), prober, ProbeBudget::new(10, 10));
    bind(&vault, "good@sina.com").await;
    // 5,000 older bindings whose code does not open (altered in the file): each is tried, fails,
    // and is skipped for a period, and stays the oldest due.
    let mut db = rusqlite::Connection::open(tmp.path().join("vault.db")).unwrap();
    let key_id: i64 = db.query_row("SELECT key_id FROM keyring", [], |r| r.get(0)).unwrap();
    let tx = db.transaction().unwrap();
    for i in 0..5000 {
        tx.execute(
            "INSERT INTO credentials (mailbox, client, provider, state, version, key_id, nonce, ciphertext, \
             created_at, generation) VALUES (?1, 'sender', 'sina', 1, 1, ?2, zeroblob(24), x'00', ?3, zeroblob(16))",
            rusqlite::params![format!("m{i:04}@sina.com"), key_id, 900 * DAY],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    clock.set(1002 * DAY);
    let settings = SweepSettings { every: std::time::Duration::from_secs(86_400), rate_per_host: 1000.0 };
    let mut sweep = Sweep::new(vault.clone(), settings);
    let (m, c) = ids("good@sina.com");
    for _ in 0..200 {
        sweep.pass().await.unwrap();
        let row = vault.get(&m, &c).await.unwrap();
        if row.last_verified_at == Some(1002 * DAY) {
            return;
        }
    }
    panic!("200 passes never reached the code bound after 5,000 that cannot be probed");
}

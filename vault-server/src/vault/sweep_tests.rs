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

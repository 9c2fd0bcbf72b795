//! The scheduled verification against a scripted prober and a fake clock: what is due, the
//! admins' reserve of the budget, and recording as a Verify by `system`.

use std::sync::Arc;

use super::sweep::Timer as _;
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

#[tokio::test]
async fn rows_that_cannot_be_probed_never_keep_the_sweep_from_the_others() {
    use super::sweep::{Sweep, SweepSettings};
    let timer = Arc::new(SimTimer::default());
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
    let mut sweep = Sweep::with_timer(vault.clone(), settings, timer.clone());
    let started_at = timer.now();
    let (m, c) = ids("good@sina.com");
    let mut reached = false;
    for _ in 0..200 {
        sweep.pass().await.unwrap();
        if vault.get(&m, &c).await.unwrap().last_verified_at == Some(1002 * DAY) {
            reached = true;
            break;
        }
    }
    assert!(reached, "200 passes never reached the code bound after 5,000 that cannot be probed");
    // And without a wait for each: they reached no provider (a wait each would be 5 s here).
    assert!(timer.now() - started_at < std::time::Duration::from_secs(1), "{:?}", timer.now() - started_at);
    // Then nothing is due but the skipped: the sweep waits instead of reading them page after
    // page (79 pages a round), until a skip runs out.
    let (started, mut passes) = (timer.now(), 0);
    while timer.now() - started < std::time::Duration::from_secs(1800) {
        let wait = sweep.pass().await.unwrap();
        passes += 1;
        timer.sleep_until(timer.now() + wait).await;
    }
    assert!(passes <= 60, "{passes} passes in half an hour with nothing to probe");
    // A binding that falls due before the cursor with no skip running out (imported with its
    // old times while the server runs) is still reached, by the hourly read from the oldest.
    bind(&vault, "late@sina.com").await;
    let old = "UPDATE credentials SET created_at = ?1, last_verified_at = ?1 WHERE mailbox = 'late@sina.com'";
    assert_eq!(db.execute(old, [800 * DAY]).unwrap(), 1);
    let (late_m, late_c) = ids("late@sina.com");
    let started = timer.now();
    while vault.get(&late_m, &late_c).await.unwrap().last_verified_at != Some(1002 * DAY) {
        assert!(
            timer.now() - started < std::time::Duration::from_secs(2 * 3600),
            "the late binding was never verified"
        );
        let wait = sweep.pass().await.unwrap();
        timer.sleep_until(timer.now() + wait).await;
    }
}

#[tokio::test]
async fn a_mailbox_the_server_cannot_check_now_does_not_hold_its_host_back() {
    use super::sweep::{Sweep, SweepSettings};
    let timer = Arc::new(SimTimer::default());
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let prober = Scripted::new(&[Accepted; 10]);
    let (_tmp, vault) = testkit::vault_with(clock.clone(), prober.clone(), ProbeBudget::new(10, 10));
    for i in 0..10 {
        bind(&vault, &format!("m{i}@sina.com")).await;
    }
    clock.set(1002 * DAY);
    // The oldest gets NO [INUSE] (no verdict, but the server answered); the others are fine.
    prober.then(&[crate::outcome::ProbeOutcome::ProtocolError]);
    prober.then(&[Accepted; 9]);
    // A short period, so that the sweep's pace (a probe every few seconds) is quicker than an
    // outage's first wait (60 s).
    let settings = SweepSettings { every: std::time::Duration::from_secs(200), rate_per_host: 1.0 };
    let mut sweep = Sweep::with_timer(vault.clone(), settings, timer.clone());
    let started = timer.now();
    let (last, c) = ids("m9@sina.com");
    while vault.get(&last, &c).await.unwrap().last_verified_at != Some(1002 * DAY) {
        assert!(timer.now() - started < std::time::Duration::from_secs(600), "never reached");
        let wait = sweep.pass().await.unwrap();
        timer.sleep_until(timer.now() + wait).await;
    }
    // The host was not taken for down: the pace alone (nine jittered probes about 10 s apart:
    // 82-100 s in 12 runs), not an outage's wait on top of it (137-147 s in 12 runs when
    // NO [INUSE] counted as the host down).
    assert!(timer.now() - started < std::time::Duration::from_secs(118), "{:?}", timer.now() - started);
}

#[tokio::test]
async fn a_binding_whose_provider_was_removed_is_reported_once_a_period() {
    use super::sweep::{Sweep, SweepSettings};
    let timer = Arc::new(SimTimer::default());
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let (tmp, vault) = testkit::vault_with(clock.clone(), Scripted::new(&[Accepted]), ProbeBudget::new(10, 10));
    bind(&vault, "old@sina.com").await;
    // Its provider since removed from the providers file.
    let db = rusqlite::Connection::open(tmp.path().join("vault.db")).unwrap();
    assert_eq!(db.execute("UPDATE credentials SET provider = 'gonemail'", []).unwrap(), 1);
    drop(db);
    clock.set(1002 * DAY);
    let settings = SweepSettings { every: std::time::Duration::from_secs(86_400), rate_per_host: 1.0 };
    let mut sweep = Sweep::with_timer(vault.clone(), settings, timer.clone());
    let started = timer.now();
    while timer.now() - started < std::time::Duration::from_secs(6 * 3600) {
        let wait = sweep.pass().await.unwrap();
        timer.sleep_until(timer.now() + wait).await;
    }
    let text = vault.metrics.render(&crate::metrics::Scraped::default()).unwrap();
    let line = text.lines().find(|l| l.starts_with("vault_scheduled_verifications_total{outcome=\"SKIPPED_ERROR\"}"));
    let line = line.unwrap_or_default().to_owned();
    assert!(line.ends_with(" 1"), "reported more than once in 6 hours of a 24-hour period: {line}");
}

/// Simulated time: a wait ends at once, with the clock moved on to its end (and the vault's
/// clock too, when it drives one).
#[derive(Debug)]
struct SimTimer {
    start: std::time::Instant,
    elapsed: std::sync::Mutex<std::time::Duration>,
    vault_clock: Option<(Arc<FakeClock>, crate::store::Millis)>,
}

impl Default for SimTimer {
    fn default() -> Self {
        Self { start: std::time::Instant::now(), elapsed: std::sync::Mutex::default(), vault_clock: None }
    }
}

impl SimTimer {
    /// Moves `clock` on with it, from `at` now.
    fn driving(clock: Arc<FakeClock>, at: crate::store::Millis) -> Self {
        clock.set(at);
        Self { vault_clock: Some((clock, at)), ..Self::default() }
    }
}

impl super::sweep::Timer for SimTimer {
    fn now(&self) -> std::time::Instant {
        self.start + *self.elapsed.lock().unwrap()
    }

    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let mut elapsed = self.elapsed.lock().unwrap();
        *elapsed = (*elapsed).max(deadline.saturating_duration_since(self.start));
        if let Some((clock, at)) = &self.vault_clock {
            clock.set(at + i64::try_from(elapsed.as_millis()).unwrap());
        }
        Box::pin(std::future::ready(()))
    }
}

/// Accepts every code until `down` is set; then the provider at `host` is unreachable. Counts
/// the probes each host gets.
#[derive(Debug)]
struct Outage {
    host: &'static str,
    down: std::sync::atomic::AtomicBool,
    probes: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

#[tonic::async_trait]
impl crate::probe::Prober for Outage {
    async fn probe(
        &self,
        req: crate::probe::ProbeRequest<'_>,
    ) -> Result<crate::probe::ProbeReport, crate::store::StoreError> {
        let host = req.provider.imap.host.clone();
        *self.probes.lock().unwrap().entry(host.clone()).or_default() += 1;
        let down = self.down.load(std::sync::atomic::Ordering::Relaxed) && host == self.host;
        let outcome = if down { crate::outcome::ProbeOutcome::Unreachable } else { Accepted };
        Ok(crate::probe::ProbeReport {
            outcome,
            server: req.provider.imap.to_string(),
            server_response: String::new(),
            hint: String::new(),
            latency: std::time::Duration::ZERO,
        })
    }
}

#[tokio::test]
async fn an_outage_at_one_provider_costs_the_others_nothing() {
    use super::sweep::{Sweep, SweepSettings};
    let timer = Arc::new(SimTimer::default());
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let prober = Arc::new(Outage { host: "imap.sina.com", down: false.into(), probes: std::sync::Mutex::default() });
    let (_tmp, vault) = testkit::vault_with(clock.clone(), prober.clone(), ProbeBudget::new(100, 100));
    // 300 Sina codes, the oldest, and 30 at NetEase.
    for i in 0..300 {
        bind(&vault, &format!("s{i:03}@sina.com")).await;
    }
    clock.set(1000 * DAY + 1000);
    for i in 0..30 {
        bind(&vault, &format!("n{i:02}@163.com")).await;
    }
    prober.down.store(true, std::sync::atomic::Ordering::Relaxed);
    prober.probes.lock().unwrap().clear();
    clock.set(1002 * DAY);
    let settings = SweepSettings { every: std::time::Duration::from_secs(86_400), rate_per_host: 1000.0 };
    let mut sweep = Sweep::with_timer(vault.clone(), settings, timer.clone());
    let started = timer.now();
    // 330 codes a day is a probe every 4.4 minutes: NetEase's 30 take about 2.2 hours.
    loop {
        let wait = sweep.pass().await.unwrap();
        let mut verified = 0;
        for i in 0..30 {
            let (m, c) = ids(&format!("n{i:02}@163.com"));
            verified += usize::from(vault.get(&m, &c).await.unwrap().last_verified_at == Some(1002 * DAY));
        }
        if verified == 30 {
            break;
        }
        let elapsed = timer.now() - started;
        assert!(elapsed < std::time::Duration::from_secs(6 * 3600), "{verified} of 30 verified after {elapsed:?}");
        timer.sleep_until(timer.now() + wait).await;
    }
    let sina = prober.probes.lock().unwrap().get("imap.sina.com").copied().unwrap_or(0);
    assert!(sina <= 12, "{sina} probes went to the provider in an outage, one per code");
}

#[tokio::test]
async fn a_result_that_cannot_be_saved_still_spaces_the_logins_at_the_host_rate() {
    use super::sweep::{Sweep, SweepSettings};
    let timer = Arc::new(SimTimer::default());
    let clock = Arc::new(FakeClock::default());
    clock.set(1000 * DAY);
    let prober = Arc::new(Outage { host: "none", down: false.into(), probes: std::sync::Mutex::default() });
    let (tmp, vault) = testkit::vault_with(clock.clone(), prober.clone(), ProbeBudget::new(100, 100));
    for i in 0..10 {
        bind(&vault, &format!("s{i}@sina.com")).await;
    }
    prober.probes.lock().unwrap().clear();
    // Every write of a result now fails (a trigger the store refuses to run), after the login.
    let db = rusqlite::Connection::open(tmp.path().join("vault.db")).unwrap();
    db.execute_batch("CREATE TRIGGER stop_writes BEFORE UPDATE ON credentials BEGIN SELECT 1; END;").unwrap();
    clock.set(1002 * DAY);
    let settings = SweepSettings { every: std::time::Duration::from_secs(86_400), rate_per_host: 1.0 };
    let mut sweep = Sweep::with_timer(vault.clone(), settings, timer.clone());
    let started = timer.now();
    while prober.probes.lock().unwrap().get("imap.sina.com").copied().unwrap_or(0) < 10 {
        assert!(timer.now() - started < std::time::Duration::from_secs(3600), "not every code was tried");
        let wait = sweep.pass().await.unwrap();
        timer.sleep_until(timer.now() + wait).await;
    }
    // Ten logins at one a second take nine seconds at least; they went back to back.
    assert!(timer.now() - started >= std::time::Duration::from_secs(9), "{:?}", timer.now() - started);
}

#[tokio::test]
async fn a_backlog_left_by_downtime_is_worked_off() {
    use super::Clock as _;
    use super::sweep::{Sweep, SweepSettings};
    const SPACING: i64 = 60_000;
    const CODES: i64 = 600;
    let clock = Arc::new(FakeClock::default());
    let prober = Arc::new(Outage { host: "none", down: false.into(), probes: std::sync::Mutex::default() });
    let (_tmp, vault) = testkit::vault_with(clock.clone(), prober, ProbeBudget::new(100, 100));
    // Codes bound a spacing apart over a period: on pace, one falls due at a time.
    let (start, every) = (1000 * DAY, CODES * SPACING);
    for i in 0..CODES {
        clock.set(start + i * SPACING);
        bind(&vault, &format!("s{i:03}@sina.com")).await;
    }
    // The vault was down for the first three quarters of the next period.
    let timer = Arc::new(SimTimer::driving(clock.clone(), start + every + 450 * SPACING));
    let settings =
        SweepSettings { every: std::time::Duration::from_millis(u64::try_from(every).unwrap()), rate_per_host: 1000.0 };
    let mut sweep = Sweep::with_timer(vault.clone(), settings, timer.clone());
    let late = |now: i64| vault.store.due_for_verification(now - every - 2 * SPACING, None, 1000);
    assert_eq!(late(clock.now_millis()).await.unwrap().len(), 448);
    // Within six tenths of a period, none is late by more than two spacings. (On pace, each
    // probe was met by one more code falling due until the period's last: 240 were late then.)
    let ended = timer.now() + settings.every * 6 / 10;
    while timer.now() < ended {
        let wait = sweep.pass().await.unwrap();
        timer.sleep_until(timer.now() + wait).await;
    }
    let still = late(clock.now_millis()).await.unwrap().len();
    assert!(still == 0, "{still} codes still late by more than two spacings");
}

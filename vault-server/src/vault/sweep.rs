//! Scheduled verification: every active code is re-probed about once per `every`, so a code the
//! provider stopped accepting (password changed, code deleted, IMAP turned off) shows up before
//! a sender fails with it.
//!
//! Which codes are due lives in the rows (`last_verified_at`, else the binding time), so a
//! restart resumes where the sweep was, with no burst. Probe starts are spaced `every / active
//! codes` apart (±25% jitter), so a period's probes spread over the period, and half that while
//! more than one code is due (a backlog, after the vault was down); one probe runs at a time; at most `rate_per_host` per second go to one provider host; and each takes a probe from
//! the mailbox's budget only if the admins' reserve is left (see
//! [`ProbeBudget::sweep_reserve`](super::ProbeBudget)).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;

use super::{Vault, VaultError};
use crate::ids::{ClientId, Mailbox};
use crate::outcome::ProbeOutcome;
use crate::store::{CredentialRow, DuePosition, Millis};

/// Due rows read per pass, on from where the previous pass stopped: rows it skips stay the
/// oldest, and are read again only once a skip runs out (at most once a [`RESCAN_GAP`]), or
/// after [`RESCAN_EVERY`].
const PAGE: usize = 64;
/// Least time between two reads of the due rows from the oldest.
const RESCAN_GAP: Duration = Duration::from_secs(60);
/// Most time between two reads from the oldest: a row can fall due before the cursor without a
/// skip running out (bindings imported with their old times while the server runs).
const RESCAN_EVERY: Duration = Duration::from_secs(3600);
/// How long a code whose probe reached no verdict (the provider unreachable, say) waits before
/// the sweep tries it again (at most a period).
const OUTAGE_RETRY: Duration = Duration::from_secs(3600);
/// How long a provider host that just had an outage gets no sweep probe; doubled while its
/// outages go on, up to [`OUTAGE_RETRY`]. Its other codes wait meanwhile, without a probe each,
/// so an outage at one provider costs the others nothing.
const HOST_FIRST_RETRY: Duration = Duration::from_secs(60);
/// Longest sleep between passes when nothing is due.
const IDLE_CHECK: Duration = Duration::from_secs(60);
/// Wait after a store error.
const ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// `serve --verify-every` and `--verify-rate`.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    pub every: Duration,
    /// Sweep logins per second to one provider host.
    pub rate_per_host: f64,
}

/// Where the sweep reads the time and waits: tokio's timer when serving, a simulated one in
/// unit tests (hours of sweeping in milliseconds, without tokio's `test-util` in the build).
pub(super) trait Timer: Send + Sync {
    fn now(&self) -> Instant;
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// tokio's timer.
#[derive(Debug, Clone, Copy)]
struct TokioTimer;

impl Timer for TokioTimer {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

/// The sweep's state between passes (all of it also recoverable from the rows).
pub struct Sweep {
    vault: Arc<Vault>,
    settings: SweepSettings,
    timer: Arc<dyn Timer>,
    /// When each provider host may be probed next.
    host_free_at: HashMap<String, Instant>,
    /// Pairs skipped (budget spent, error, outage) and when to try them again.
    skipped: HashMap<(String, String), Instant>,
    /// Provider hosts in an outage: until when they get no probe, and the wait after the next.
    hosts_down: HashMap<String, (Instant, Duration)>,
    /// When the next probe may start: the previous one's start plus the spacing.
    next_start: Instant,
    /// The last due row read; `None`: the next pass reads from the oldest.
    cursor: Option<DuePosition>,
    /// A skip ran out since the last read from the oldest.
    rescan_due: bool,
    /// When the last read from the oldest started.
    rescanned_at: Instant,
}

impl Sweep {
    pub fn new(vault: Arc<Vault>, settings: SweepSettings) -> Self {
        Self::with_timer(vault, settings, Arc::new(TokioTimer))
    }

    pub(super) fn with_timer(vault: Arc<Vault>, settings: SweepSettings, timer: Arc<dyn Timer>) -> Self {
        let now = timer.now();
        Self {
            vault,
            settings,
            timer,
            host_free_at: HashMap::new(),
            skipped: HashMap::new(),
            next_start: now,
            hosts_down: HashMap::new(),
            cursor: None,
            rescan_due: false,
            rescanned_at: now,
        }
    }

    fn every_millis(&self) -> Millis {
        i64::try_from(self.settings.every.as_millis()).unwrap_or(i64::MAX)
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        tracing::info!(every = %humantime::format_duration(self.settings.every), rate_per_host = self.settings.rate_per_host, "verification sweep on");
        loop {
            let wait = match self.pass().await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(error = %e, "verification sweep: cannot read the store; retrying");
                    ERROR_BACKOFF
                }
            };
            self.timer.sleep_until(self.timer.now() + wait).await;
        }
    }

    /// Probes the next page of rows due now (spaced out); returns how long to wait before the
    /// next pass.
    pub(super) async fn pass(&mut self) -> Result<Duration, VaultError> {
        let now = self.vault.clock.now_millis();
        let due_before = now.saturating_sub(self.every_millis());
        let started = self.timer.now();
        let skips = self.skipped.len();
        self.skipped.retain(|_, until| *until > started);
        self.rescan_due |= self.skipped.len() < skips;
        // Rows newly due sort after the cursor; those before it were probed (and moved on) or
        // skipped, so they are read again only once a skip has run out.
        let since = started.saturating_duration_since(self.rescanned_at);
        if (self.rescan_due && since >= RESCAN_GAP) || since >= RESCAN_EVERY {
            (self.cursor, self.rescan_due, self.rescanned_at) = (None, false, started);
        }
        let page = self.vault.store.due_for_verification(due_before, self.cursor.clone(), PAGE).await?;
        if let Some(last) = page.last() {
            self.cursor = Some(last.due_position());
        }
        let full = page.len() == PAGE;
        let due: Vec<CredentialRow> =
            page.into_iter().filter(|r| !self.skipped.contains_key(&(r.mailbox.clone(), r.client.clone()))).collect();
        self.vault.metrics.observe_sweep_due(due.len());
        if due.is_empty() {
            if full {
                // Read on past skipped rows.
                return Ok(Duration::ZERO);
            }
            // Nothing due past the cursor: wait for the next row to fall due or a skip to run out.
            let wake = if self.rescan_due {
                Some(self.rescanned_at + RESCAN_GAP)
            } else {
                self.skipped.values().min().copied()
            };
            let until_wake = wake.map_or(IDLE_CHECK, |t| t.saturating_duration_since(started));
            let until_due = self.until_next_due(now).await?;
            return Ok(until_due.min(until_wake).clamp(Duration::from_millis(100), IDLE_CHECK));
        }
        let (active, _) = self.vault.store.count_by_state().await?;
        let spacing = self.settings.every / u32::try_from(active.max(1)).unwrap_or(u32::MAX);
        // Behind (more due than the one that just fell due: the vault was down, say): twice the
        // pace until caught up. On pace, a backlog would never shrink.
        let spacing = if due.len() > 1 { spacing / 2 } else { spacing };
        for row in due {
            let host = self.vault.registry.by_id(&row.provider).map_or_else(String::new, |p| p.imap.host.clone());
            if let Some(&(until, _)) = self.hosts_down.get(&host).filter(|(until, _)| *until > self.timer.now()) {
                // Its host is in an outage: the code waits for it, and takes no probe's spacing.
                self.skipped.insert((row.mailbox, row.client), until);
                continue;
            }
            // Spaced from the previous probe's start, so a pass over N codes takes one period; a
            // code that never reached the provider (its row does not open, say) takes no space.
            self.timer.sleep_until(self.next_start).await;
            let next = self.timer.now() + jittered(spacing);
            if self.probe(row, host, due_before).await {
                self.next_start = next;
            }
        }
        Ok(Duration::ZERO)
    }

    /// How long until the first row past the cursor falls due (at most [`IDLE_CHECK`]).
    async fn until_next_due(&self, now: Millis) -> Result<Duration, VaultError> {
        let next = self.vault.store.due_for_verification(Millis::MAX, self.cursor.clone(), 1).await?;
        let wait = next.first().map_or(IDLE_CHECK, |r| {
            let due_at = r.last_verified_at.unwrap_or(r.created_at).saturating_add(self.every_millis());
            Duration::from_millis(u64::try_from(due_at.saturating_sub(now)).unwrap_or(0))
        });
        Ok(wait.clamp(Duration::from_millis(100), IDLE_CHECK))
    }

    /// Waits for the row's provider host, then verifies it as a scheduled Verify; whether a probe
    /// went to the provider.
    async fn probe(&mut self, row: CredentialRow, host: String, due_before: Millis) -> bool {
        let pair = (row.mailbox.clone(), row.client.clone());
        let (Ok(mailbox), Ok(client)) = (Mailbox::parse(&row.mailbox), ClientId::parse(&row.client)) else {
            // An edited row: it cannot be probed; look again next period.
            self.skipped.insert(pair, self.timer.now() + self.settings.every);
            return false;
        };
        let gap = Duration::from_secs_f64(1.0 / self.settings.rate_per_host);
        if let Some(free_at) = self.host_free_at.get(&host) {
            self.timer.sleep_until(*free_at).await;
        }
        match self.vault.verify_due(mailbox, client, due_before).await {
            Ok(Some(report)) => {
                self.host_free_at.insert(host.clone(), self.timer.now() + gap);
                if report.outcome == ProbeOutcome::Accepted {
                    tracing::info!(mailbox = %pair.0, client = %pair.1, outcome = "ACCEPTED", "scheduled verify");
                } else {
                    let outcome = report.outcome.as_str();
                    tracing::warn!(mailbox = %pair.0, client = %pair.1, outcome, hint = %report.hint, "scheduled verify");
                }
                self.vault.metrics.observe_sweep(report.outcome.as_str());
                let longest = self.settings.every.min(OUTAGE_RETRY);
                // The host answered (a verdict, or a reply about this mailbox such as NO [INUSE]):
                // it is up, whatever this code's fate.
                let answered = !matches!(
                    report.outcome,
                    ProbeOutcome::Unreachable | ProbeOutcome::TimedOut | ProbeOutcome::TlsFailed
                );
                if answered {
                    self.hosts_down.remove(&host);
                } else {
                    // The host waits a while, longer while its outages go on.
                    let wait = self.hosts_down.get(&host).map_or(HOST_FIRST_RETRY, |&(_, next)| next).min(longest);
                    self.hosts_down.insert(host, (self.timer.now() + wait, (wait * 2).min(longest)));
                }
                if !report.outcome.is_verdict() {
                    // Still due (nothing was checked): this code waits long, so that a mailbox
                    // the provider never answers does not hold its host back.
                    self.skipped.insert(pair, self.timer.now() + longest);
                }
                true
            }
            Ok(None) => false,
            Err(VaultError::RateLimited { retry_after }) => {
                tracing::debug!(mailbox = %pair.0, "scheduled verify skipped: the mailbox's budget is kept for admins");
                self.vault.metrics.observe_sweep("SKIPPED_BUDGET");
                self.skipped.insert(pair, self.timer.now() + retry_after);
                false
            }
            Err(e) => {
                // A row that cannot be probed (its provider is gone, its code does not open) is
                // reported once a period, not retried in a loop. A storage error may have come
                // after the login (its result could not be saved): then the host's rate holds.
                // Errors before any login (no provider, a code that does not open) cost no wait.
                tracing::warn!(mailbox = %pair.0, client = %pair.1, error = %e, "scheduled verify failed");
                self.vault.metrics.observe_sweep("SKIPPED_ERROR");
                // A storage error passes (the database comes back): tried again like an outage.
                let storage = matches!(e, VaultError::Store(_) | VaultError::Internal(_));
                let wait = if storage { self.settings.every.min(OUTAGE_RETRY) } else { self.settings.every };
                self.skipped.insert(pair, self.timer.now() + wait);
                if storage && !host.is_empty() {
                    self.host_free_at.insert(host, self.timer.now() + gap);
                }
                false
            }
        }
    }
}

/// `d` ±25%, so sweeps of several servers or restarts do not fall into step.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

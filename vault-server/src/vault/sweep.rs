//! Scheduled verification: every active code is re-probed about once per `every`, so a code the
//! provider stopped accepting (password changed, code deleted, IMAP turned off) shows up before
//! a sender fails with it.
//!
//! Which codes are due lives in the rows (`last_verified_at`, else the binding time), so a
//! restart resumes where the sweep was, with no burst. Probe starts are spaced `every / active
//! codes` apart (±25% jitter), so a period's probes spread over the period; one probe runs at a
//! time; at most `rate_per_host` per second go to one provider host; and each takes a probe from
//! the mailbox's budget only if the admins' reserve is left (see
//! [`ProbeBudget::sweep_reserve`](super::ProbeBudget)).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;

use super::{Vault, VaultError};
use crate::ids::{ClientId, Mailbox};
use crate::store::{CredentialRow, DuePosition, Millis};

/// Due rows read per pass, from where the previous pass stopped (so that skipped rows, which
/// stay the oldest, are read past instead of filling every page).
const PAGE: usize = 64;
/// How long a code whose probe reached no verdict (the provider unreachable, say) waits before
/// the sweep tries it again, at most (and at most a period).
const OUTAGE_RETRY: Duration = Duration::from_secs(3600);
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

/// The sweep's state between passes (all of it also recoverable from the rows).
pub struct Sweep {
    vault: Arc<Vault>,
    settings: SweepSettings,
    /// When each provider host may be probed next.
    host_free_at: HashMap<String, Instant>,
    /// Pairs skipped (budget spent, error) and when to try them again.
    skipped: HashMap<(String, String), Instant>,
    /// When the next probe may start: the previous one's start plus the spacing.
    next_start: Instant,
    /// Where this round over the due rows stopped; `None`: the next pass starts a round from the
    /// oldest.
    cursor: Option<DuePosition>,
    /// Whether this round has tried a row yet.
    tried_in_round: bool,
}

impl Sweep {
    pub fn new(vault: Arc<Vault>, settings: SweepSettings) -> Self {
        Self {
            vault,
            settings,
            host_free_at: HashMap::new(),
            skipped: HashMap::new(),
            next_start: Instant::now(),
            cursor: None,
            tried_in_round: false,
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
            tokio::time::sleep(wait).await;
        }
    }

    /// Probes the next page of rows due now (spaced out); returns how long to wait before the
    /// next pass.
    pub(super) async fn pass(&mut self) -> Result<Duration, VaultError> {
        let now = self.vault.clock.now_millis();
        let due_before = now.saturating_sub(self.every_millis());
        let started = Instant::now();
        self.skipped.retain(|_, until| *until > started);
        let from_oldest = self.cursor.is_none();
        if from_oldest {
            self.tried_in_round = false;
        }
        let page = self.vault.store.due_for_verification(due_before, self.cursor.take(), PAGE).await?;
        if from_oldest {
            self.vault.metrics.observe_sweep_due(page.len());
        }
        // A full page: the round goes on from its last row. A short one ends the round.
        if page.len() == PAGE {
            self.cursor = page.last().map(CredentialRow::due_position);
        }
        let read = page.len();
        let due: Vec<CredentialRow> =
            page.into_iter().filter(|r| !self.skipped.contains_key(&(r.mailbox.clone(), r.client.clone()))).collect();
        if due.is_empty() {
            if self.cursor.is_some() || self.tried_in_round {
                // Read on past skipped rows, or start the next round.
                return Ok(Duration::ZERO);
            }
            if from_oldest && read == 0 {
                return self.until_next_due(now).await;
            }
            // A whole round found only skipped rows: wait for the first skip to run out.
            let first = self.skipped.values().min().map_or(IDLE_CHECK, |t| t.saturating_duration_since(started));
            return Ok(first.clamp(Duration::from_secs(1), IDLE_CHECK));
        }
        self.tried_in_round = true;
        let (active, _) = self.vault.store.count_by_state().await?;
        let spacing = self.settings.every / u32::try_from(active.max(1)).unwrap_or(u32::MAX);
        for row in due {
            // Spaced from the previous probe's start, so a pass over N codes takes one period.
            tokio::time::sleep_until(self.next_start).await;
            self.next_start = Instant::now() + jittered(spacing);
            self.probe(row, due_before).await;
        }
        Ok(Duration::ZERO)
    }

    /// How long until the oldest active row falls due (at most [`IDLE_CHECK`]).
    async fn until_next_due(&self, now: Millis) -> Result<Duration, VaultError> {
        let oldest = self.vault.store.due_for_verification(Millis::MAX, None, 1).await?;
        let wait = oldest.first().map_or(IDLE_CHECK, |r| {
            let due_at = r.last_verified_at.unwrap_or(r.created_at).saturating_add(self.every_millis());
            Duration::from_millis(u64::try_from(due_at.saturating_sub(now)).unwrap_or(0))
        });
        Ok(wait.clamp(Duration::from_millis(100), IDLE_CHECK))
    }

    /// Waits for the row's provider host, then verifies it as a scheduled Verify.
    async fn probe(&mut self, row: CredentialRow, due_before: Millis) {
        let pair = (row.mailbox.clone(), row.client.clone());
        let (Ok(mailbox), Ok(client)) = (Mailbox::parse(&row.mailbox), ClientId::parse(&row.client)) else {
            // An edited row: it cannot be probed; look again next period.
            self.skipped.insert(pair, Instant::now() + self.settings.every);
            return;
        };
        let host = self.vault.registry.by_id(&row.provider).map_or_else(String::new, |p| p.imap.host.clone());
        let gap = Duration::from_secs_f64(1.0 / self.settings.rate_per_host);
        if let Some(free_at) = self.host_free_at.get(&host) {
            tokio::time::sleep_until(*free_at).await;
        }
        let result = self.vault.verify_due(mailbox, client, due_before).await;
        match result {
            Ok(Some(report)) => {
                self.host_free_at.insert(host, Instant::now() + gap);
                if report.outcome == crate::outcome::ProbeOutcome::Accepted {
                    tracing::info!(mailbox = %pair.0, client = %pair.1, outcome = "ACCEPTED", "scheduled verify");
                } else {
                    let outcome = report.outcome.as_str();
                    tracing::warn!(mailbox = %pair.0, client = %pair.1, outcome, hint = %report.hint, "scheduled verify");
                }
                self.vault.metrics.observe_sweep(report.outcome.as_str());
                if !report.outcome.is_verdict() {
                    // Still due (an outage checked nothing): not again before the provider had time.
                    self.skipped.insert(pair, Instant::now() + self.settings.every.min(OUTAGE_RETRY));
                }
            }
            Ok(None) => {}
            Err(VaultError::RateLimited { retry_after }) => {
                tracing::debug!(mailbox = %pair.0, "scheduled verify skipped: the mailbox's budget is kept for admins");
                self.vault.metrics.observe_sweep("SKIPPED_BUDGET");
                self.skipped.insert(pair, Instant::now() + retry_after);
            }
            Err(e) => {
                // A row that cannot be probed (its provider is gone, its code does not open) is
                // reported once a period, not retried in a loop.
                tracing::warn!(mailbox = %pair.0, client = %pair.1, error = %e, "scheduled verify failed");
                self.vault.metrics.observe_sweep("SKIPPED_ERROR");
                self.skipped.insert(pair, Instant::now() + self.settings.every);
            }
        }
    }
}

/// `d` ±25%, so sweeps of several servers or restarts do not fall into step.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

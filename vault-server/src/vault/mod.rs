//! The vault's domain service. Every change runs validate → probe → one short write
//! transaction that re-checks state and version. No database transaction is open during a
//! probe.

mod budget;
mod error;
mod lifecycle;
#[cfg(test)]
mod lifecycle_tests;
mod locks;
mod requests;
#[cfg(test)]
mod requests_tests;
pub mod review;
mod rotation;
mod sweep;
#[cfg(test)]
mod sweep_tests;
#[cfg(test)]
pub mod testkit;
mod usage;

pub use crate::clock::{Clock, SystemClock};
pub use budget::ProbeBudget;
pub use error::VaultError;
pub use lifecycle::{Revoked, Rotated};
pub use requests::{Answer, KEEP_FOR as REQUESTS_KEPT_FOR, request_row_is_authentic};
pub use rotation::{KeyRotation, RotationReport};
pub use sweep::{Sweep, SweepSettings};

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::caller::Caller;
use crate::crypto::{CryptoError, LiveKeyring};
use crate::ids::{ClientId, Mailbox};
use crate::metrics::Metrics;
use crate::probe::{ProbeReport, ProbeRequest, Prober};
use crate::provider::{Provider, Registry};
use crate::secret::AuthCode;
use crate::store::{
    AuditEvent, AuditQuery, AuditRecord, CredentialRow, CredentialState, ListQuery, Store, StoreError, UnusedQuery,
};
use locks::PairLocks;
use usage::Usage;

/// What a hint says when [`Holder::Unknown`].
pub(super) const SHARING_UNCHECKED: &str =
    "Whether another client of this mailbox holds the same code could not be checked";

/// Who else holds a code: one just replaced or revoked, or one being bound.
pub(super) enum Holder {
    Other(String),
    Nobody,
    Unknown,
}

pub use review::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page};

/// A revealed code with where to use it. Debug shows the code redacted.
#[derive(Debug)]
pub struct Revealed {
    pub code: AuthCode,
    pub version: u64,
    pub provider: Arc<Provider>,
}

/// Why a row's code did not open.
enum Opened {
    /// Sealed under a key the keyring no longer holds.
    KeyGone,
    Failed(VaultError),
}

/// How long a pair's lease lasts unless [`Vault::with_lease_for`] says: longer than the longest
/// probe `--probe-timeout` allows (300 s) plus its commit, so only a replica that died
/// mid-change leaves one to expire.
const LEASE_FOR: std::time::Duration = std::time::Duration::from_secs(360);
/// How often a change waiting for another replica's lease asks again.
const LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// Reveal usage events written per transaction.
const USAGE_BATCH: usize = 5_000;
/// This process, among replicas holding leases.
static REPLICA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("{:016x}", rand::random::<u64>()));
/// Leases taken by this process so far: each holder is unique.
static LEASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A pair taken for a change: the process's lock and, over a shared database, the lease, given
/// back when dropped.
pub(crate) struct PairGuard {
    _local: tokio::sync::OwnedMutexGuard<()>,
    lease: Option<(Arc<dyn Store>, String, String, String)>,
    /// Renews the lease while the change runs, so a slow commit (a database failing over) is
    /// never taken over by a replica that would probe the pair again.
    renewing: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PairGuard {
    fn drop(&mut self) {
        if let Some(renewing) = self.renewing.take() {
            renewing.abort();
        }
        let Some((store, mailbox, client, holder)) = self.lease.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.release_pair(mailbox, client, holder).await {
                    tracing::warn!(error = %e, "could not give a pair's lease back; it expires by itself");
                }
            });
        }
    }
}

/// Renewals of a pair's lease at most: with the first lease, four lease lengths in all, so a
/// change stuck for good (a COMMIT on a half-open socket) does not hold the pair for ever.
const LEASE_RENEWALS: u32 = 9;

/// Renews a pair's lease every third of `lease_for` until aborted (its guard dropped), until
/// [`LEASE_RENEWALS`] ran out, or until it is found lost (it expired while the database could
/// not be reached, and was taken over).
async fn renew_lease(
    (store, clock): (Arc<dyn Store>, Arc<dyn Clock>),
    (mailbox, client, holder): (String, String, String),
    lease_for: std::time::Duration,
) {
    let ttl = i64::try_from(lease_for.as_millis()).unwrap_or(i64::MAX);
    for _ in 0..LEASE_RENEWALS {
        tokio::time::sleep((lease_for / 3).max(std::time::Duration::from_millis(10))).await;
        let now = clock.now_millis();
        match store.renew_pair(&mailbox, &client, &holder, now, now.saturating_add(ttl)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("a pair's lease expired during its change and was taken over");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "could not renew a pair's lease; retrying"),
        }
    }
    tracing::warn!("a change held its pair for four lease lengths; its lease now runs out");
}

/// The vault: store, keys, providers, prober and probe budget.
pub struct Vault {
    store: Arc<dyn Store>,
    keys: Arc<LiveKeyring>,
    registry: Registry,
    prober: Arc<dyn Prober>,
    budget: ProbeBudget,
    clock: Arc<dyn Clock>,
    locks: PairLocks,
    usage: Usage,
    /// Held by the usage flush in progress.
    flushing: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    rotation: Option<Arc<KeyRotation>>,
    lease_for: std::time::Duration,
}

impl Vault {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<LiveKeyring>,
        registry: Registry,
        prober: Arc<dyn Prober>,
        budget: ProbeBudget,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            keys,
            registry,
            prober,
            budget,
            clock,
            locks: PairLocks::default(),
            usage: Usage::default(),
            flushing: tokio::sync::Mutex::new(()),
            metrics,
            rotation: None,
            lease_for: LEASE_FOR,
        }
    }

    /// Takes the pair for a change: this process's lock, then (over a shared database) the
    /// pair's lease, polled until the replica holding it is done or its lease expired. Under
    /// both, the row is read afresh, so a call that waited fails its cheap checks and never
    /// probes again what another replica just probed.
    pub(crate) async fn lock_pair(&self, mailbox: &str, client: &str) -> Result<PairGuard, VaultError> {
        let local = self.locks.lock(mailbox, client).await;
        if !self.store.shared() {
            return Ok(PairGuard { _local: local, lease: None, renewing: None });
        }
        let holder = format!("{}/{}", *REPLICA, LEASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        // Made before the first try: a call cancelled while its lease was being written still
        // gives it back (the holder is unique, so this never releases another's).
        let mut guard = PairGuard {
            _local: local,
            lease: Some((self.store.clone(), mailbox.to_owned(), client.to_owned(), holder.clone())),
            renewing: None,
        };
        let ttl = i64::try_from(self.lease_for.as_millis()).unwrap_or(i64::MAX);
        loop {
            let now = self.clock.now_millis();
            if self.store.lease_pair(mailbox, client, &holder, now, now.saturating_add(ttl)).await? {
                guard.renewing = Some(tokio::spawn(renew_lease(
                    (self.store.clone(), self.clock.clone()),
                    (mailbox.to_owned(), client.to_owned(), holder),
                    self.lease_for,
                )));
                return Ok(guard);
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// How long a pair's lease lasts (over a shared database): the probe's overall timeout plus
    /// time to commit, so a lease left by a replica that died mid-change holds others off no
    /// longer than that.
    #[must_use]
    pub fn with_lease_for(mut self, lease_for: std::time::Duration) -> Self {
        self.lease_for = lease_for;
        self
    }

    /// Enables `RotateDataKey`: `rotation` holds the KEK this server unlocked with.
    #[must_use]
    pub fn with_rotation(mut self, rotation: Arc<KeyRotation>) -> Self {
        self.rotation = Some(rotation);
        self
    }

    /// Rotates the data key (or joins the rotation under way) and waits until the old key is
    /// deleted; dropping the future leaves the rotation running.
    pub async fn rotate_data_key(&self, caller: Arc<Caller>) -> Result<RotationReport, VaultError> {
        if self.store.shared() {
            return Err(VaultError::RotationShared);
        }
        let rotation =
            self.rotation.as_ref().ok_or_else(|| VaultError::Internal("key rotation is not enabled".into()))?;
        rotation.rotate(caller).await
    }

    fn provider_for_mailbox(&self, mailbox: &Mailbox) -> Result<Arc<Provider>, VaultError> {
        self.registry
            .lookup(mailbox.domain())
            .cloned()
            .ok_or_else(|| VaultError::UnknownProvider { domain: mailbox.domain().to_owned() })
    }

    fn provider_of_row(&self, row: &CredentialRow) -> Result<Arc<Provider>, VaultError> {
        self.registry.by_id(&row.provider).cloned().ok_or_else(|| VaultError::ProviderGone(row.provider.clone()))
    }

    /// Rejects a code that cannot be this provider's, before any network.
    /// `field` names the request's code field in the answer (`auth_code`, `new_auth_code`).
    fn check_format(provider: &Provider, field: &'static str, code: &AuthCode) -> Result<(), VaultError> {
        if provider.code_format.accepts(code) {
            return Ok(());
        }
        let hint = if code.expose().is_empty() {
            // Nothing was given: not a login password.
            format!(
                "is empty (or only spaces); give the client auth code from {}'s webmail ({})",
                provider.name, provider.settings_path
            )
        } else {
            provider.format_hint()
        };
        Err(VaultError::BadCodeFormat { field, provider: provider.name.clone(), hint })
    }

    /// Spends one probe from the mailbox's budget and probes.
    async fn probe(&self, provider: &Provider, mailbox: &Mailbox, code: &AuthCode) -> Result<ProbeReport, VaultError> {
        self.probe_leaving(provider, mailbox, code, 0.0).await
    }

    /// Spends one probe from the mailbox's budget if `keep` are left after it, and probes.
    async fn probe_leaving(
        &self,
        provider: &Provider,
        mailbox: &Mailbox,
        code: &AuthCode,
        keep: f64,
    ) -> Result<ProbeReport, VaultError> {
        let shared = self.store.take_probe(mailbox.as_str(), self.clock.now_millis(), self.budget.bucket(keep)).await?;
        shared
            .unwrap_or_else(|| self.budget.take_leaving(mailbox.as_str(), std::time::Instant::now(), keep))
            .map_err(|retry_after| VaultError::RateLimited { retry_after })?;
        let report = self.prober.probe(ProbeRequest { provider, login: mailbox.as_str(), code }).await?;
        self.metrics.observe_probe(&provider.id, report.outcome.as_str());
        tracing::info!(
            outcome = report.outcome.as_str(),
            server = %report.server,
            latency_ms = u64::try_from(report.latency.as_millis()).unwrap_or(u64::MAX),
            "probe"
        );
        Ok(report)
    }

    /// Probes a code that was just replaced or revoked; skipped when the budget is spent,
    /// because the change itself already happened.
    async fn probe_previous(
        &self,
        provider: &Provider,
        mailbox: &Mailbox,
        code: Option<AuthCode>,
        what: &str,
        change: &AuditEvent,
    ) -> Option<ProbeReport> {
        let code = code?;
        let mut report = match self.probe(provider, mailbox, &code).await {
            Ok(report) => report,
            Err(e) => {
                tracing::info!(error = %e, "previous code not probed");
                return None;
            }
        };
        // Deleting a code another client of the mailbox still uses would break that client.
        // No client is left out: a Rotate of this pair since may have given it this code back.
        report.hint = match self.also_held_by(mailbox, None, &code).await {
            Holder::Other(client) => provider.shared_code_hint(report.outcome, what, &client),
            Holder::Nobody => provider.previous_code_hint(report.outcome, what),
            // Unsure: never "delete it" on a doubt.
            Holder::Unknown => {
                format!(
                    "{} ({SHARING_UNCHECKED}: look before deleting it.)",
                    provider.previous_code_hint(report.outcome, what)
                )
            }
        };
        // The change's own event was written in its commit, before this probe ran.
        let at = self.clock.now_millis();
        let probed = AuditEvent {
            at,
            first_at: at,
            outcome: "OLD_CODE_PROBED".to_owned(),
            probe_outcome: Some(report.outcome),
            ..change.clone()
        };
        if let Err(e) = self.store.audit(probed).await {
            tracing::warn!(error = %e, "could not audit the probe of a replaced code");
        }
        Some(report)
    }

    /// Which active binding of `mailbox` (other than client `besides`) holds `code` (compared in
    /// constant time), if any; `Unknown` when that cannot be told (a read that failed, a code that
    /// does not open, more bindings than are looked at).
    pub(super) async fn also_held_by(&self, mailbox: &Mailbox, besides: Option<&str>, code: &AuthCode) -> Holder {
        const LOOKED_AT: usize = 500;
        // Enough to tell whether the others are over 500 (`besides` may be among them).
        let query =
            ListQuery { mailbox: Some(mailbox.as_str().to_owned()), limit: LOOKED_AT + 2, ..ListQuery::default() };
        let Ok(rows) = self.store.list(query).await else { return Holder::Unknown };
        let others: Vec<CredentialRow> = rows.into_iter().filter(|r| Some(r.client.as_str()) != besides).collect();
        let mut unsure = others.len() > LOOKED_AT;
        for row in others.into_iter().take(LOOKED_AT) {
            let client = row.client.clone();
            match self.decrypt(Arc::new(row)).await {
                Ok((held, _)) if held.same_as(code) => {
                    return Holder::Other(client);
                }
                Ok(_) => {}
                Err(_) => unsure = true,
            }
        }
        if unsure { Holder::Unknown } else { Holder::Nobody }
    }

    /// Decrypts the code held by `row`. A row read before a key rotation re-sealed it and
    /// retired its key is read again (the row is new now); also returns the row decrypted.
    async fn decrypt(&self, row: Arc<CredentialRow>) -> Result<(AuthCode, Arc<CredentialRow>), VaultError> {
        match self.open(&row) {
            Ok(code) => Ok((code, row)),
            Err(Opened::KeyGone) => {
                let row = self.store.get(&row.mailbox, &row.client).await?;
                match self.open(&row) {
                    Ok(code) => Ok((code, row)),
                    Err(Opened::KeyGone) => Err(VaultError::DataLoss),
                    Err(Opened::Failed(e)) => Err(e),
                }
            }
            Err(Opened::Failed(e)) => Err(e),
        }
    }

    /// Decrypts the code held by `row`, telling apart a row sealed under a key this keyring no
    /// longer holds (a rotation retired it after the row was read: read the row again).
    fn open(&self, row: &CredentialRow) -> Result<AuthCode, Opened> {
        let Some(stored) = row.code.as_ref().filter(|_| row.state == CredentialState::Active) else {
            return Err(Opened::Failed(VaultError::Revoked));
        };
        // Every seal has had a generation since start-up re-sealed the legacy ones; a row without
        // one was edited (an old ciphertext replayed through the legacy format).
        let generation = stored.generation.as_ref().ok_or(Opened::Failed(VaultError::DataLoss))?;
        let plain = self
            .keys
            .load()
            .open_code(
                stored.key_id,
                &row.mailbox,
                &row.client,
                row.version,
                Some(generation),
                &stored.sealed.nonce,
                &stored.sealed.ciphertext,
            )
            .map_err(|e| match e {
                CryptoError::UnknownKey(_) => Opened::KeyGone,
                e => Opened::Failed(e.into()),
            })?;
        let text = std::str::from_utf8(&plain).map_err(|_| Opened::Failed(VaultError::DataLoss))?;
        Ok(AuthCode::new(&Zeroizing::new(text.to_owned())))
    }

    /// Decrypts a pair's code and counts the use in memory: a cached row (or, on a miss, the
    /// store's read) and a decrypt, no disk write.
    pub async fn reveal(&self, caller: &Caller, mailbox: &Mailbox, client: &ClientId) -> Result<Revealed, VaultError> {
        let row = match self.store.get_here(mailbox.as_str(), client.as_str()) {
            Some(row) => row?,
            None => self.store.get(mailbox.as_str(), client.as_str()).await?,
        };
        let (code, row) = self.decrypt(row).await?;
        let revealed = Revealed { code, version: row.version, provider: self.provider_of_row(&row)? };
        self.usage.record(caller, mailbox, client, self.clock.now_millis());
        Ok(revealed)
    }

    /// Writes the coalesced Reveal usage (audit events and `last_used_at`). On failure the
    /// usage is kept for the next flush.
    pub async fn flush_usage(&self) -> Result<(), VaultError> {
        // One flush at a time: the review's flush waits for the periodic one to finish, so its
        // page counts every use taken before it.
        let _one = self.flushing.lock().await;
        let mut taken = self.usage.take();
        // Short transactions, so that a flush of many pairs never holds the writer for long.
        // What is not written goes back to pending when `taken` drops (failure or cancellation).
        while !taken.is_empty() {
            let batch = taken.batch(USAGE_BATCH);
            if let Err(e) = self.store.record_reveals(batch.clone()).await {
                self.usage.restore(batch);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Retries a destruction of old bytes in the live files that a destroying change could not
    /// finish (readers, a full disk, an I/O error) or a crash left owed. `Ok(true)` while one is
    /// still owed; an error says why it failed (and it is still owed).
    pub async fn finish_destruction(&self) -> Result<bool, VaultError> {
        if !self.store.destruction_owed() {
            return Ok(false);
        }
        let done = self.store.destroy_freed().await?;
        if done {
            tracing::info!("the owed WAL truncation finished: destroyed bytes are in no live file");
        }
        Ok(!done)
    }

    /// Resolves once enough Reveal usage is pending that it should be flushed now.
    pub async fn usage_filled(&self) {
        self.usage.filled().await;
    }

    /// A page of the quarterly review. Pending usage is flushed first, so the page is exact.
    pub async fn list_unused(&self, mut query: UnusedQuery) -> Result<Page<CredentialRow>, VaultError> {
        self.flush_usage().await?;
        let limit = query.limit;
        query.limit = limit + 1;
        Ok(Page::cut(self.store.list_unused(query).await?, limit))
    }

    /// A page of the audit trail, newest first. Pending Reveal usage is flushed first, so the
    /// page is current.
    pub async fn audit_events(&self, mut query: AuditQuery) -> Result<Page<AuditRecord>, VaultError> {
        self.flush_usage().await?;
        let limit = query.limit;
        query.limit = limit + 1;
        Ok(Page::cut(self.store.audit_events(query).await?, limit))
    }

    pub fn now_millis(&self) -> i64 {
        self.clock.now_millis()
    }

    /// One binding's metadata.
    pub async fn get(&self, mailbox: &Mailbox, client: &ClientId) -> Result<Arc<CredentialRow>, VaultError> {
        Ok(self.store.get(mailbox.as_str(), client.as_str()).await?)
    }

    /// A page of metadata, ordered by (mailbox, client).
    pub async fn list(&self, mut query: ListQuery) -> Result<Page<CredentialRow>, VaultError> {
        let limit = query.limit;
        query.limit = limit + 1;
        Ok(Page::cut(self.store.list(query).await?, limit))
    }

    /// The row if it exists; `None` when the pair was never bound.
    async fn find(&self, mailbox: &Mailbox, client: &ClientId) -> Result<Option<Arc<CredentialRow>>, VaultError> {
        match self.store.get(mailbox.as_str(), client.as_str()).await {
            Ok(row) => Ok(Some(row)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

//! Online data-key rotation. A new key is stored and made active (new writes are sealed under
//! it), every active code is re-sealed and every valid token row re-keyed under it in small
//! batches while the vault serves, then the older keys are deleted and their wrappings destroyed
//! in the live files. The keyring is the rotation's state: while it holds more than one key a
//! rotation is under way, so a crash at any point leaves every code readable (each row names
//! the key that opens it) and the next start, or the next call, carries on from there.

use std::sync::Arc;

use tokio::sync::{Mutex, watch};

use super::{Clock, VaultError};
use crate::caller::Caller;
use crate::crypto::{Kek, KeyId, Keyring, LiveKeyring};
use crate::metrics::Metrics;
use crate::store::{AuditEvent, CredentialRow, DataKeyInfo, Millis, Reseal, Store, StoreError, StoredCode};

/// Rows re-sealed per transaction: short enough that writes and Reveals never wait long.
const BATCH: usize = 256;
/// Passes that re-seal nothing, or retirements kept pending, before a rotation gives up.
const MAX_IDLE_PASSES: u32 = 5;

/// What a finished rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// The key every code is now sealed under.
    pub active: DataKeyInfo,
    /// Keys deleted.
    pub retired: Vec<KeyId>,
    pub codes_resealed: u64,
    pub tokens_rekeyed: u64,
    /// Codes that failed authentication under their old key (tampered): moved to the new key
    /// as they were, so they still answer DATA_LOSS.
    pub unreadable_codes: u64,
}

/// Why a rotation stopped. Cloneable, since every joined caller gets it.
#[derive(Debug, Clone)]
enum Stopped {
    /// The salt changed since this server unlocked: its KEK would wrap the new key under a
    /// passphrase that no longer unlocks the vault.
    PassphraseChanged,
    Failed(String),
}

impl From<StoreError> for Stopped {
    fn from(e: StoreError) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<Stopped> for VaultError {
    fn from(s: Stopped) -> Self {
        match s {
            Stopped::PassphraseChanged => Self::PassphraseChanged,
            Stopped::Failed(why) => Self::RotationStopped(why),
        }
    }
}

type Outcome = Option<Result<RotationReport, Stopped>>;

/// Waits for a rotation's outcome; `None` only if its task vanished without one.
async fn finished(mut rx: watch::Receiver<Outcome>) -> Outcome {
    rx.wait_for(Option::is_some).await.ok().and_then(|o| o.clone())
}

/// Runs rotations one at a time; a call while one runs joins it.
pub struct KeyRotation {
    store: Arc<dyn Store>,
    keys: Arc<LiveKeyring>,
    kek: Kek,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    running: Mutex<Option<watch::Receiver<Outcome>>>,
}

impl std::fmt::Debug for KeyRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRotation").finish_non_exhaustive()
    }
}

impl KeyRotation {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<LiveKeyring>,
        kek: Kek,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { store, keys, kek, clock, metrics, running: Mutex::new(None) }
    }

    /// Rotates (or joins the rotation under way) and waits for it to finish. Dropping the
    /// returned future leaves the rotation running.
    pub async fn rotate(self: &Arc<Self>, caller: Arc<Caller>) -> Result<RotationReport, VaultError> {
        match finished(self.start_or_join(Some(caller)).await).await {
            Some(result) => result.map_err(Into::into),
            None => Err(VaultError::RotationStopped("the rotation task ended".into())),
        }
    }

    /// Carries on with a rotation a crash interrupted (the keyring holds more than one key);
    /// nothing otherwise. Runs in the background.
    pub async fn resume(self: &Arc<Self>) {
        if self.keys.load().holds_older_keys() {
            tracing::info!("a data-key rotation was interrupted; resuming it");
            drop(self.start_or_join(None).await);
        }
    }

    /// Rotates whenever the active key is `max_age` old (`--data-key-max-age`); runs until the
    /// task is dropped. Checks at least hourly, so a clock or key change is noticed.
    pub async fn rotate_when_older_than(self: Arc<Self>, max_age: std::time::Duration) {
        const HOUR_MS: i64 = 3_600_000;
        let max_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let mut backoff_ms = 1_000;
        loop {
            let wait_ms = match self.store.data_keys().await {
                Ok(keys) => {
                    let age = keys.last().map_or(0, |k| self.clock.now_millis().saturating_sub(k.created_at));
                    if age >= max_ms {
                        tracing::info!(age_ms = age, "the active data key reached --data-key-max-age; rotating");
                        match finished(self.start_or_join(None).await).await {
                            Some(Ok(_)) => backoff_ms = 1_000,
                            Some(Err(Stopped::PassphraseChanged)) => {
                                tracing::error!(
                                    "--data-key-max-age: the passphrase changed after this server started; automatic rotation is off until it restarts"
                                );
                                return;
                            }
                            _ => backoff_ms = (backoff_ms * 2).min(HOUR_MS),
                        }
                        backoff_ms
                    } else {
                        max_ms.saturating_sub(age)
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the data keys' ages; retrying in a minute");
                    60_000
                }
            };
            let wait = u64::try_from(wait_ms.clamp(1_000, HOUR_MS)).unwrap_or(1_000);
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
    }

    /// The outcome channel of the rotation under way, or of a new one.
    async fn start_or_join(self: &Arc<Self>, caller: Option<Arc<Caller>>) -> watch::Receiver<Outcome> {
        let mut running = self.running.lock().await;
        if let Some(rx) = running.as_ref().filter(|rx| rx.borrow().is_none()) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        let me = self.clone();
        tokio::spawn(async move {
            // Run in its own task, so that even a panic ends in an answer for every waiter.
            let worker = me.clone();
            let out = match tokio::spawn(async move { worker.run(caller.as_deref()).await }).await {
                Ok(out) => out,
                Err(e) => Err(Stopped::Failed(format!("the rotation task failed: {e}"))),
            };
            match &out {
                Ok(r) => tracing::info!(
                    active_key = r.active.key_id,
                    retired = ?r.retired,
                    codes = r.codes_resealed,
                    tokens = r.tokens_rekeyed,
                    unreadable = r.unreadable_codes,
                    "data-key rotation finished"
                ),
                Err(e) => {
                    tracing::error!(reason = ?e, "data-key rotation stopped; every code stays readable, and it resumes on the next call or start");
                }
            }
            me.metrics.observe_rotation(out.is_ok());
            tx.send_replace(Some(out));
        });
        *running = Some(rx.clone());
        rx
    }

    async fn run(&self, caller: Option<&Caller>) -> Result<RotationReport, Stopped> {
        let mut ring = self.keys.current();
        if !ring.holds_older_keys() {
            let (next, wrapped) = ring.with_new_key(&self.kek.key);
            let id = wrapped.key_id;
            self.store.add_data_key(self.kek.salt, wrapped, self.clock.now_millis()).await.map_err(|e| match e {
                StoreError::Conflict => Stopped::PassphraseChanged,
                StoreError::AlreadyExists => Stopped::Failed(format!("data key {id} exists already")),
                e => e.into(),
            })?;
            self.keys.replace(next);
            ring = self.keys.current();
            tracing::info!(key_id = id, "new data key stored; new writes are sealed under it, re-sealing the rest");
        }
        let active = ring.active_key_id();
        let mut report = RotationReport {
            active: DataKeyInfo { key_id: active, created_at: 0 },
            retired: Vec::new(),
            codes_resealed: 0,
            tokens_rekeyed: 0,
            unreadable_codes: 0,
        };
        let mut passes = 0;
        let destroyed = loop {
            passes += 1;
            self.reseal_codes(&ring, &mut report).await?;
            let invalid = self.rekey_tokens(&ring, &mut report).await?;
            // No code sealed under an old key can be stored while the keys are deleted.
            let retiring = self.keys.retiring().await;
            let retirement = self.store.retire_data_keys(active, invalid).await?;
            if retirement.pending_codes == 0 && retirement.pending_tokens == 0 {
                self.keys.replace(ring.without_retired());
                drop(retiring);
                report.retired = retirement.retired;
                break retirement.destroyed;
            }
            // Written under the old key meanwhile (a code sealed just before the swap, a token
            // minted by a CLI that unlocked before it): another pass picks them up.
            if passes >= MAX_IDLE_PASSES {
                return Err(Stopped::Failed(format!(
                    "{} codes and {} tokens were still under the old key after {passes} passes",
                    retirement.pending_codes, retirement.pending_tokens
                )));
            }
        };
        // The old wrapping must leave the live files before the call says the key is gone.
        if !destroyed && self.store.scrubs_files() {
            self.destroy_freed().await?;
        } else if !destroyed {
            tracing::info!(
                "the retired keys' wrappings stay in the database server's files (dead tuples, WAL) until it \
                 vacuums and recycles them; unwrapping one still needs the passphrase"
            );
        }
        let keys = self.store.data_keys().await?;
        report.active = keys.iter().copied().find(|k| k.key_id == active).unwrap_or(report.active);
        self.audit(caller, &report).await;
        Ok(report)
    }

    async fn reseal_codes(&self, ring: &Keyring, report: &mut RotationReport) -> Result<(), Stopped> {
        let active = ring.active_key_id();
        let mut idle_passes = 0;
        loop {
            let rows = self.store.sealed_before(active, BATCH).await?;
            if rows.is_empty() {
                return Ok(());
            }
            // Rows that never take their new seal (each pass finds them changed) would spin here.
            if idle_passes >= MAX_IDLE_PASSES {
                return Err(Stopped::Failed(format!(
                    "{} codes under the old key could not be re-sealed in {MAX_IDLE_PASSES} passes",
                    rows.len()
                )));
            }
            // Re-sealed codes and altered ones moved as they are, written apart so that only the
            // first are counted as re-sealed.
            let (mut batch, mut moved) = (Vec::with_capacity(rows.len()), Vec::new());
            for row in &rows {
                let (reseal, readable) = reseal(ring, row);
                if readable {
                    batch.extend(reseal);
                } else {
                    tracing::error!(mailbox = %row.mailbox, client = %row.client, "a stored code failed authentication during key rotation; moved to the new key as it is (Reveal answers DATA_LOSS)");
                    report.unreadable_codes += 1;
                    moved.extend(reseal);
                }
            }
            let n = self.store.reseal(batch).await?;
            let m = if moved.is_empty() { 0 } else { self.store.reseal(moved).await? };
            idle_passes = if n + m == 0 { idle_passes + 1 } else { 0 };
            report.codes_resealed += u64::try_from(n).unwrap_or(0);
            self.metrics.observe_rekeyed("code", n);
            // Let Reveals and writes in between batches.
            tokio::task::yield_now().await;
        }
    }

    /// Re-MACs every valid token row under an older key; returns the ids of rows under an older
    /// key that have no valid MAC (they move unchanged, and stay refused).
    async fn rekey_tokens(&self, ring: &Keyring, report: &mut RotationReport) -> Result<Vec<String>, Stopped> {
        let active = ring.active_key_id();
        let (mut rekeys, mut invalid) = (Vec::new(), Vec::new());
        for read in self.store.tokens().await? {
            match read {
                Ok(t) if t.key_id < active => match crate::auth::rekey(ring, &t) {
                    Some(r) => rekeys.push(r),
                    None => invalid.push(t.id),
                },
                Ok(_) => {}
                Err(bad) => invalid.push(bad.id),
            }
        }
        if !rekeys.is_empty() {
            let n = self.store.rekey_tokens(rekeys).await?;
            report.tokens_rekeyed += u64::try_from(n).unwrap_or(0);
            self.metrics.observe_rekeyed("token", n);
        }
        Ok(invalid)
    }

    /// Retries the destruction of deleted rows in the live files until it finishes (a long
    /// reader, such as a backup, can hold it off).
    async fn destroy_freed(&self) -> Result<(), Stopped> {
        let mut wait = std::time::Duration::from_millis(250);
        while !self.store.destroy_freed().await? {
            tracing::warn!(retry_in_ms = wait.as_millis(), "readers keep the old key's wrapping in the WAL; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(5));
        }
        Ok(())
    }

    async fn audit(&self, caller: Option<&Caller>, report: &RotationReport) {
        let now: Millis = self.clock.now_millis();
        let (token, role) =
            caller.map_or(("system".to_owned(), "system".to_owned()), |c| (c.token_id.clone(), c.role.to_string()));
        let event = AuditEvent {
            at: now,
            caller: token,
            caller_role: role,
            rpc: "RotateDataKey".into(),
            mailbox: String::new(),
            client: String::new(),
            outcome: format!("OK: key {} active, retired {:?}", report.active.key_id, report.retired),
            probe_outcome: None,
            count: 1,
            first_at: now,
            reason: String::new(),
        };
        if let Err(e) = self.store.audit(event).await {
            tracing::warn!(error = %e, "could not audit the data-key rotation");
        }
    }
}

/// The row's code sealed under the active key (fresh nonce and generation), and whether it
/// opened. A code that does not open is moved as it is: it stays unreadable, and no longer pins
/// the old key.
fn reseal(ring: &Keyring, row: &CredentialRow) -> (Option<Reseal>, bool) {
    let Some(code) = &row.code else { return (None, true) };
    let opened = code.generation.as_ref().and_then(|g| {
        ring.open_code(
            code.key_id,
            &row.mailbox,
            &row.client,
            row.version,
            Some(g),
            &code.sealed.nonce,
            &code.sealed.ciphertext,
        )
        .ok()
    });
    let (new, readable) = match opened {
        Some(plain) => {
            let (key_id, generation, sealed) = ring.seal_code(&row.mailbox, &row.client, row.version, &plain);
            (StoredCode { key_id, generation: Some(generation), sealed }, true)
        }
        None => (StoredCode { key_id: ring.active_key_id(), ..code.clone() }, false),
    };
    let reseal = Reseal {
        mailbox: row.mailbox.clone(),
        client: row.client.clone(),
        version: row.version,
        old_key_id: code.key_id,
        old_ciphertext: code.sealed.ciphertext.clone(),
        code: new,
    };
    (Some(reseal), readable)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testkit::{self, FakeClock};
    use super::super::{Vault, VaultError};
    use crate::ids::{ClientId, Mailbox};
    use crate::outcome::ProbeOutcome;
    use crate::store::{NewBinding, StoredCode};

    fn code(i: usize) -> String {
        format!("rotate{i:010}")
    }

    fn mailbox(i: usize) -> Mailbox {
        Mailbox::parse(format!("user{i}@sina.com")).unwrap()
    }

    /// `n` bindings under the current key, in one import.
    async fn seed(vault: &Vault, n: usize) {
        let ring = vault.keys.current();
        let client = ClientId::parse("sender").unwrap();
        let rows = (0..n)
            .map(|i| {
                let (key_id, generation, sealed) =
                    ring.seal_code(mailbox(i).as_str(), client.as_str(), 1, code(i).as_bytes());
                NewBinding {
                    mailbox: mailbox(i),
                    client: client.clone(),
                    provider: "sina".into(),
                    code: StoredCode { key_id, generation: Some(generation), sealed },
                    now: 1,
                    probe_outcome: ProbeOutcome::Accepted,
                }
            })
            .collect();
        let audit = crate::store::contract::event("Import", "", "", 1);
        vault.store.import(rows, audit).await.unwrap();
    }

    async fn reveal(vault: &Vault, i: usize) -> Result<String, VaultError> {
        let client = ClientId::parse("sender").unwrap();
        vault.reveal(&testkit::client("sender"), &mailbox(i), &client).await.map(|r| r.code.expose().to_owned())
    }

    async fn key_ids(vault: &Vault) -> Vec<u32> {
        vault.store.data_keys().await.unwrap().iter().map(|k| k.key_id).collect()
    }

    fn db(tmp: &tempfile::TempDir) -> rusqlite::Connection {
        rusqlite::Connection::open(tmp.path().join("vault.db")).unwrap()
    }

    #[tokio::test]
    async fn every_code_moves_to_the_new_key_in_batches_and_the_old_key_is_deleted() {
        let (_tmp, vault) = testkit::vault(Arc::new(FakeClock::default()));
        let n = super::BATCH * 2 + 7;
        seed(&vault, n).await;
        let admin = Arc::new(testkit::admin());
        let report = vault.rotate_data_key(admin.clone()).await.unwrap();
        assert_eq!((report.active.key_id, report.retired.clone()), (2, vec![1]));
        assert_eq!((report.codes_resealed, report.unreadable_codes), (n as u64, 0));
        assert_eq!(key_ids(&vault).await, [2]);
        assert_eq!(vault.keys.load().key_ids().collect::<Vec<_>>(), [2], "the old key left memory too");
        for i in [0, super::BATCH, n - 1] {
            assert_eq!(reveal(&vault, i).await.unwrap(), code(i));
        }
        let again = vault.rotate_data_key(admin).await.unwrap();
        assert_eq!((again.active.key_id, again.retired), (3, vec![2]));
        assert_eq!(reveal(&vault, 3).await.unwrap(), code(3));
    }

    #[tokio::test]
    async fn a_row_read_before_its_key_was_retired_is_read_again_not_data_loss() {
        let (_tmp, vault) = testkit::vault(Arc::new(FakeClock::default()));
        seed(&vault, 2).await;
        // As a Reveal holding a cached row while the rotation re-seals it and retires its key.
        let stale = vault.store.get(mailbox(1).as_str(), "sender").await.unwrap();
        vault.rotate_data_key(Arc::new(testkit::admin())).await.unwrap();
        assert!(matches!(vault.open(&stale), Err(super::super::Opened::KeyGone)));
        let (revealed, fresh) = vault.decrypt(stale).await.unwrap();
        assert_eq!((revealed.expose(), fresh.code.as_ref().map(|c| c.key_id)), (code(1).as_str(), Some(2)));
    }

    #[tokio::test]
    async fn calls_during_a_rotation_join_it_instead_of_starting_another() {
        let (_tmp, vault) = testkit::vault(Arc::new(FakeClock::default()));
        seed(&vault, 600).await;
        let admin = Arc::new(testkit::admin());
        let (a, b) = tokio::join!(vault.rotate_data_key(admin.clone()), vault.rotate_data_key(admin.clone()));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b, "the second call joined the first");
        assert_eq!(key_ids(&vault).await, [2]);
    }

    #[tokio::test]
    async fn an_altered_row_is_moved_as_it_is_and_does_not_pin_the_old_key() {
        let (tmp, vault) = testkit::vault(Arc::new(FakeClock::default()));
        seed(&vault, 3).await;
        db(&tmp)
            .execute(
                "UPDATE credentials SET ciphertext = zeroblob(length(ciphertext)) WHERE mailbox = 'user1@sina.com'",
                [],
            )
            .unwrap();
        let report = vault.rotate_data_key(Arc::new(testkit::admin())).await.unwrap();
        // Two re-sealed, one moved as it is (it counted as re-sealed before: an audit found it).
        assert_eq!((report.codes_resealed, report.unreadable_codes, report.retired), (2, 1, vec![1]));
        assert!(matches!(reveal(&vault, 1).await, Err(VaultError::DataLoss)));
        assert_eq!(reveal(&vault, 2).await.unwrap(), code(2));
    }

    #[tokio::test]
    async fn rows_with_a_malformed_nonce_or_generation_do_not_stall_the_rotation() {
        let (tmp, vault) = testkit::vault(Arc::new(FakeClock::default()));
        seed(&vault, 4).await;
        let db = db(&tmp);
        db.execute("UPDATE credentials SET nonce = X'00' WHERE mailbox = 'user1@sina.com'", []).unwrap();
        db.execute("UPDATE credentials SET generation = X'01' WHERE mailbox = 'user2@sina.com'", []).unwrap();
        let rotation = vault.rotate_data_key(Arc::new(testkit::admin()));
        let report = tokio::time::timeout(std::time::Duration::from_secs(20), rotation).await.unwrap().unwrap();
        assert_eq!((report.unreadable_codes, report.retired), (2, vec![1]));
        assert!(matches!(reveal(&vault, 1).await, Err(VaultError::DataLoss)));
        assert_eq!(reveal(&vault, 3).await.unwrap(), code(3));
    }

    #[tokio::test]
    async fn a_passphrase_changed_after_start_stops_the_rotation_before_it_adds_a_key() {
        let (tmp, vault) = testkit::vault(Arc::new(FakeClock::default()));
        seed(&vault, 2).await;
        db(&tmp).execute("UPDATE vault_meta SET kdf_salt = zeroblob(16)", []).unwrap();
        let refused = vault.rotate_data_key(Arc::new(testkit::admin())).await;
        assert!(matches!(refused, Err(VaultError::PassphraseChanged)), "{refused:?}");
        assert_eq!(key_ids(&vault).await, [1]);
        assert_eq!(reveal(&vault, 1).await.unwrap(), code(1));
    }
}

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
    Full,
    Failed(String),
}

impl From<StoreError> for Stopped {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full => Self::Full,
            e => Self::Failed(e.to_string()),
        }
    }
}

impl From<Stopped> for VaultError {
    fn from(s: Stopped) -> Self {
        match s {
            Stopped::PassphraseChanged => Self::PassphraseChanged,
            Stopped::Full => Self::RotationStopped("the disk is full".into()),
            Stopped::Failed(why) => Self::RotationStopped(why),
        }
    }
}

type Outcome = Option<Result<RotationReport, Stopped>>;

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
        let mut done = self.start_or_join(Some(caller)).await;
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| VaultError::RotationStopped("the rotation task ended".into()))?;
        match outcome.clone() {
            Some(result) => result.map_err(Into::into),
            None => Err(VaultError::RotationStopped("the rotation task ended".into())),
        }
    }

    /// Carries on with a rotation a crash interrupted (the keyring holds more than one key);
    /// nothing otherwise. Runs in the background.
    pub async fn resume(self: &Arc<Self>) {
        if self.keys.load().key_ids().nth(1).is_some() {
            tracing::info!("a data-key rotation was interrupted; resuming it");
            drop(self.start_or_join(None).await);
        }
    }

    /// Rotates whenever the active key is `max_age` old (`--data-key-max-age`); runs until the
    /// task is dropped. Checks at least hourly, so a clock or key change is noticed.
    pub async fn rotate_when_older_than(self: Arc<Self>, max_age: std::time::Duration) {
        let max_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        loop {
            let wait_ms = match self.store.data_keys().await {
                Ok(keys) => {
                    let age = keys.last().map_or(0, |k| self.clock.now_millis().saturating_sub(k.created_at));
                    if age >= max_ms {
                        tracing::info!(age_ms = age, "the active data key reached --data-key-max-age; rotating");
                        let mut done = self.start_or_join(None).await;
                        let _ = done.wait_for(Option::is_some).await;
                        1_000
                    } else {
                        max_ms - age
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the data keys' ages; retrying in a minute");
                    60_000
                }
            };
            let wait = u64::try_from(wait_ms.clamp(1_000, 3_600_000)).unwrap_or(1_000);
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
            let out = me.run(caller.as_deref()).await;
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
        if ring.key_ids().nth(1).is_none() {
            let (next, wrapped) = ring.with_new_key(&self.kek.key);
            let id = wrapped.key_id;
            self.store.add_data_key(self.kek.salt, wrapped, self.clock.now_millis()).await.map_err(|e| match e {
                StoreError::Conflict => Stopped::PassphraseChanged,
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
        loop {
            self.reseal_codes(&ring, &mut report).await?;
            let rekeys: Vec<_> = self
                .store
                .tokens()
                .await?
                .into_iter()
                .filter_map(Result::ok)
                .filter_map(|t| crate::auth::rekey(&ring, &t))
                .collect();
            if !rekeys.is_empty() {
                let n = self.store.rekey_tokens(rekeys).await?;
                report.tokens_rekeyed += u64::try_from(n).unwrap_or(0);
                self.metrics.observe_rekeyed("token", n);
            }
            // Codes written under the old key meanwhile (a Bind sealed just before the swap)
            // keep the old key; another pass picks them up.
            let retirement = self.store.retire_data_keys(active).await?;
            if retirement.pending_codes == 0 {
                report.retired = retirement.retired;
                break;
            }
        }
        self.keys.replace(ring.without_retired());
        let keys = self.store.data_keys().await?;
        report.active = keys.iter().copied().find(|k| k.key_id == active).unwrap_or(report.active);
        self.audit(caller, &report).await;
        Ok(report)
    }

    async fn reseal_codes(&self, ring: &Keyring, report: &mut RotationReport) -> Result<(), Stopped> {
        let active = ring.active_key_id();
        loop {
            let rows = self.store.sealed_before(active, BATCH).await?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut batch = Vec::with_capacity(rows.len());
            for row in &rows {
                let (reseal, readable) = reseal(ring, row);
                if !readable {
                    tracing::error!(mailbox = %row.mailbox, client = %row.client, "a stored code failed authentication during key rotation; moved to the new key as it is (Reveal answers DATA_LOSS)");
                    report.unreadable_codes += 1;
                }
                batch.extend(reseal);
            }
            let n = self.store.reseal(batch).await?;
            report.codes_resealed += u64::try_from(n).unwrap_or(0);
            self.metrics.observe_rekeyed("code", n);
            // Let Reveals and writes in between batches.
            tokio::task::yield_now().await;
        }
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
        old_nonce: code.sealed.nonce.to_vec(),
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
    use crate::store::{AuditEvent, NewBinding, StoredCode};

    fn code(i: usize) -> String {
        format!("rotate{i:010}")
    }

    fn mailbox(i: usize) -> Mailbox {
        Mailbox::parse(&format!("user{i}@sina.com")).unwrap()
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
        let audit = AuditEvent {
            at: 1,
            caller: "t".into(),
            caller_role: "admin".into(),
            rpc: "Import".into(),
            mailbox: String::new(),
            client: String::new(),
            outcome: "OK".into(),
            probe_outcome: None,
            count: 1,
            first_at: 1,
        };
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
        assert_eq!((report.codes_resealed, report.unreadable_codes, report.retired), (3, 1, vec![1]));
        assert!(matches!(reveal(&vault, 1).await, Err(VaultError::DataLoss)));
        assert_eq!(reveal(&vault, 2).await.unwrap(), code(2));
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

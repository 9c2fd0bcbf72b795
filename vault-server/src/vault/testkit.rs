//! Test doubles for the vault: a clock the test moves, a prober that accepts every code, and a
//! scripted prober that answers from a list and records what it was asked. Unit tests only;
//! end-to-end tests use the real binary and a real Dovecot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Clock, KeyRotation, ProbeBudget, Vault};
use crate::caller::{Caller, Role};
use crate::crypto::{KdfParams, Kek, Key, Keyring, LiveKeyring, Salt};
use crate::ids::ClientId;
use crate::metrics::Metrics;
use crate::outcome::ProbeOutcome;
use crate::probe::{ProbeReport, ProbeRequest, Prober};
use crate::provider::Registry;
use crate::store::StoreError;
use crate::store::{SqliteStore, UnlockMaterial};

pub const DAY: i64 = 24 * 3600 * 1000;

/// A clock set by the test, in Unix milliseconds.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicI64);

impl FakeClock {
    pub fn set(&self, millis: i64) {
        self.0.store(millis, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Accepts every code, as a provider would a correct one.
#[derive(Debug)]
pub struct AcceptAll;

#[tonic::async_trait]
impl Prober for AcceptAll {
    async fn probe(&self, req: ProbeRequest<'_>) -> Result<ProbeReport, StoreError> {
        Ok(ProbeReport {
            outcome: ProbeOutcome::Accepted,
            server: req.provider.imap.to_string(),
            server_response: "OK scripted".into(),
            hint: String::new(),
            latency: Duration::ZERO,
        })
    }
}

/// Answers each probe with the next scripted outcome (ACCEPTED once the script runs out) and
/// records the codes it was asked to try, in order.
#[derive(Debug, Default)]
pub struct Scripted {
    script: Mutex<VecDeque<ProbeOutcome>>,
    tried: Mutex<Vec<String>>,
}

impl Scripted {
    pub fn new(outcomes: &[ProbeOutcome]) -> Arc<Self> {
        Arc::new(Self { script: Mutex::new(outcomes.iter().copied().collect()), tried: Mutex::default() })
    }

    /// Queues more outcomes.
    pub fn then(&self, outcomes: &[ProbeOutcome]) {
        self.script.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(outcomes);
    }

    /// The codes probed so far, oldest first.
    pub fn tried(&self) -> Vec<String> {
        self.tried.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

#[tonic::async_trait]
impl Prober for Scripted {
    async fn probe(&self, req: ProbeRequest<'_>) -> Result<ProbeReport, StoreError> {
        self.tried.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(req.code.expose().to_owned());
        let outcome = self
            .script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
            .unwrap_or(ProbeOutcome::Accepted);
        Ok(ProbeReport {
            outcome,
            server: req.provider.imap.to_string(),
            server_response: format!("scripted {}", outcome.as_str()),
            hint: req.provider.hint(outcome),
            latency: Duration::ZERO,
        })
    }
}

/// A vault on a fresh SQLite file, with the fake clock and prober and a generous budget.
pub fn vault(clock: Arc<FakeClock>) -> (tempfile::TempDir, Arc<Vault>) {
    vault_with(clock, Arc::new(AcceptAll), ProbeBudget::new(1000, 1000))
}

/// A vault with the given prober and probe budget.
pub fn vault_with(
    clock: Arc<FakeClock>,
    prober: Arc<dyn Prober>,
    budget: ProbeBudget,
) -> (tempfile::TempDir, Arc<Vault>) {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let kek = Key::random();
    let (keyring, wrapped) = Keyring::generate(&kek);
    let material = UnlockMaterial { salt: Salt([1; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
    let store: Arc<dyn crate::store::Store> =
        Arc::new(SqliteStore::create(&tmp.path().join("vault.db"), &material, 0).unwrap_or_else(|e| panic!("{e}")));
    let keys = Arc::new(LiveKeyring::new(keyring));
    let metrics = Arc::new(Metrics::default());
    let kek = Kek { key: kek, salt: Salt([1; 16]) };
    let rotation = Arc::new(KeyRotation::new(store.clone(), keys.clone(), kek, clock.clone(), metrics.clone()));
    let vault = Vault::new(store, keys, Registry::builtin(), prober, budget, clock, metrics).with_rotation(rotation);
    (tmp, Arc::new(vault))
}

pub fn admin() -> Caller {
    Caller { token_id: "tk_admin".into(), role: Role::Admin }
}

pub fn client(id: &str) -> Caller {
    Caller { token_id: format!("tk_{id}"), role: Role::Client(ClientId::parse(id).unwrap_or_else(|e| panic!("{e}"))) }
}

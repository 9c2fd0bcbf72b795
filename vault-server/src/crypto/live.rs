//! The keyring a running server uses, swapped whole when a data key is added or retired, so
//! that readers (every Reveal) take a snapshot without a lock.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::Keyring;

/// The current keyring; each reader gets a consistent snapshot.
#[derive(Debug)]
pub struct LiveKeyring {
    current: ArcSwap<Keyring>,
    /// Writers hold it shared from sealing a code until it is stored; retiring keys holds it
    /// exclusively, so no code sealed under a key can be stored after that key is deleted.
    sealing: RwLock<()>,
}

impl LiveKeyring {
    pub fn new(keyring: Keyring) -> Self {
        Self { current: ArcSwap::from_pointee(keyring), sealing: RwLock::new(()) }
    }

    /// A snapshot: cheap, lock-free, and unaffected by a swap that happens meanwhile.
    pub fn load(&self) -> arc_swap::Guard<Arc<Keyring>> {
        self.current.load()
    }

    /// A snapshot that may be kept across awaits.
    pub fn current(&self) -> Arc<Keyring> {
        self.current.load_full()
    }

    pub fn replace(&self, keyring: Keyring) {
        self.current.store(Arc::new(keyring));
    }

    /// Held from sealing a code until it is stored.
    pub async fn sealing(&self) -> RwLockReadGuard<'_, ()> {
        self.sealing.read().await
    }

    /// Held while keys are deleted: waits for every code being sealed to be stored.
    pub async fn retiring(&self) -> RwLockWriteGuard<'_, ()> {
        self.sealing.write().await
    }
}

//! The keyring a running server uses, swapped whole when a data key is added or retired, so
//! that readers (every Reveal) take a snapshot without a lock.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Keyring;

/// The current keyring; each reader gets a consistent snapshot.
#[derive(Debug)]
pub struct LiveKeyring(ArcSwap<Keyring>);

impl LiveKeyring {
    pub fn new(keyring: Keyring) -> Self {
        Self(ArcSwap::from_pointee(keyring))
    }

    /// A snapshot: cheap, lock-free, and unaffected by a swap that happens meanwhile.
    pub fn load(&self) -> arc_swap::Guard<Arc<Keyring>> {
        self.0.load()
    }

    /// A snapshot that may be kept across awaits.
    pub fn current(&self) -> Arc<Keyring> {
        self.0.load_full()
    }

    pub fn replace(&self, keyring: Keyring) {
        self.0.store(Arc::new(keyring));
    }
}

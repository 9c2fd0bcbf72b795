//! One async mutex per (mailbox, client), so changes to a pair run one at a time in this
//! process (and, over a shared database, a lease row across replicas: see `Vault::lock_pair`). The mutex is held across that pair's probe, which makes a racing second change wait
//! and then fail its cheap checks instead of probing the provider again. No database
//! transaction is ever open during a probe; the store re-checks state and version on commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

type Pair = (String, String);

#[derive(Debug, Default)]
pub struct PairLocks {
    map: Mutex<HashMap<Pair, Weak<AsyncMutex<()>>>>,
}

impl PairLocks {
    pub async fn lock(&self, mailbox: &str, client: &str) -> OwnedMutexGuard<()> {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (mailbox.to_owned(), client.to_owned());
            if let Some(m) = map.get(&key).and_then(Weak::upgrade) {
                m
            } else {
                map.retain(|_, w| w.strong_count() > 0);
                let m = Arc::new(AsyncMutex::new(()));
                map.insert(key, Arc::downgrade(&m));
                m
            }
        };
        mutex.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_pair_waits_other_pair_does_not() {
        let locks = PairLocks::default();
        let held = locks.lock("a@sina.com", "x").await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), locks.lock("a@sina.com", "x")).await.is_err()
        );
        let _other = locks.lock("a@sina.com", "y").await;
        drop(held);
        let _again = locks.lock("a@sina.com", "x").await;
    }
}

//! A read-through cache of credential rows in front of another store, so that a Reveal costs no
//! SQLite read (and no file-lock syscalls). Every write through this store drops the rows it
//! touched, before and after it; a generation counter keeps a read that raced a write from
//! caching a stale row. The cache is bounded: once full, further rows are read from the store each time.
//!
//! All credential writes go through the one server process; a deployment with several replicas
//! on one database would need cross-process invalidation before using this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{
    AuditEvent, AuditQuery, AuditRecord, AuditStore, CredentialRow, CredentialStore, DataKeyInfo, KeyMaterialStore,
    ListQuery, Millis, NewBinding, ProbeRecord, RecordedAnswer, RequestKey, RequestRecord, Reseal, Retirement,
    RevokeChange, RotateChange, Store, StoreError, StoredRequest, TokenRekey, TokenRow, TokenStore, UnlockMaterial,
    UnreadableToken, UnusedQuery,
};
use crate::crypto::{KeyId, Salt, WrappedKey};
use crate::outcome::ProbeOutcome;

/// Rows kept; about 200 bytes each.
pub const DEFAULT_CAPACITY: usize = 100_000;

type Rows = HashMap<String, HashMap<String, Arc<CredentialRow>>>;

#[derive(Debug, Default)]
struct Cache {
    rows: Rows,
    len: usize,
}

/// `inner` plus the row cache.
pub struct CachedStore<S> {
    inner: S,
    cache: RwLock<Cache>,
    generation: AtomicU64,
    capacity: usize,
}

impl<S> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl<S: Store> CachedStore<S> {
    pub fn new(inner: S, capacity: usize) -> Self {
        Self { inner, cache: RwLock::new(Cache::default()), generation: AtomicU64::new(0), capacity }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops a pair's row; called before and after every write that touches it, so a read
    /// that raced the write either sees the new generation or has its row dropped after.
    fn forget(&self, mailbox: &str, client: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut cache = self.write_cache();
        let Some(clients) = cache.rows.get_mut(mailbox) else { return };
        let removed = clients.remove(client).is_some();
        if clients.is_empty() {
            cache.rows.remove(mailbox);
        }
        if removed {
            cache.len -= 1;
        }
    }

    /// Runs a write that touches one pair, keeping the cache honest around it.
    async fn write<T>(
        &self,
        mailbox: &str,
        client: &str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.forget(mailbox, client);
        let out = f.await;
        self.forget(mailbox, client);
        out
    }

    fn lookup(&self, mailbox: &str, client: &str) -> Option<Arc<CredentialRow>> {
        let cache = self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.rows.get(mailbox).and_then(|c| c.get(client)).cloned()
    }
}

#[tonic::async_trait]
impl<S: Store> KeyMaterialStore for CachedStore<S> {
    async fn unlock_material(&self) -> Result<UnlockMaterial, StoreError> {
        self.inner.unlock_material().await
    }

    async fn data_keys(&self) -> Result<Vec<DataKeyInfo>, StoreError> {
        self.inner.data_keys().await
    }

    async fn add_data_key(&self, salt: Salt, key: WrappedKey, now: Millis) -> Result<(), StoreError> {
        self.inner.add_data_key(salt, key, now).await
    }

    async fn retire_data_keys(&self, active: KeyId, invalid_tokens: Vec<String>) -> Result<Retirement, StoreError> {
        self.inner.retire_data_keys(active, invalid_tokens).await
    }

    async fn destroy_freed(&self) -> Result<bool, StoreError> {
        self.inner.destroy_freed().await
    }

    fn scrubs_files(&self) -> bool {
        self.inner.scrubs_files()
    }
}

#[tonic::async_trait]
impl<S: Store> CredentialStore for CachedStore<S> {
    fn cached(&self, mailbox: &str, client: &str) -> Option<Arc<CredentialRow>> {
        self.lookup(mailbox, client)
    }

    async fn get(&self, mailbox: &str, client: &str) -> Result<Arc<CredentialRow>, StoreError> {
        if let Some(row) = self.lookup(mailbox, client) {
            return Ok(row);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let row = self.inner.get(mailbox, client).await?;
        let mut cache = self.write_cache();
        // Cache only if no write happened since the read began, and while there is room.
        if self.generation.load(Ordering::Acquire) == generation && cache.len < self.capacity {
            let previous = cache.rows.entry(mailbox.to_owned()).or_default().insert(client.to_owned(), row.clone());
            if previous.is_none() {
                cache.len += 1;
            }
        }
        Ok(row)
    }

    async fn bind(
        &self,
        new: NewBinding,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let (m, c) = (new.mailbox.as_str().to_owned(), new.client.as_str().to_owned());
        self.write(&m, &c, self.inner.bind(new, audit, request)).await
    }

    async fn import(&self, rows: Vec<NewBinding>, audit: AuditEvent) -> Result<(), StoreError> {
        let pairs: Vec<(String, String)> =
            rows.iter().map(|r| (r.mailbox.as_str().to_owned(), r.client.as_str().to_owned())).collect();
        let out = self.inner.import(rows, audit).await;
        for (m, c) in pairs {
            self.forget(&m, &c);
        }
        out
    }

    async fn rotate(
        &self,
        change: RotateChange,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let (m, c) = (change.mailbox.clone(), change.client.clone());
        self.write(&m, &c, self.inner.rotate(change, audit, request)).await
    }

    async fn revoke(
        &self,
        change: RevokeChange,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let (m, c) = (change.mailbox.clone(), change.client.clone());
        self.write(&m, &c, self.inner.revoke(change, audit, request)).await
    }

    async fn find_request(&self, caller: String, request_id: String) -> Result<Option<StoredRequest>, StoreError> {
        self.inner.find_request(caller, request_id).await
    }

    async fn update_request_answer(&self, key: RequestKey, answer: RecordedAnswer) -> Result<(), StoreError> {
        self.inner.update_request_answer(key, answer).await
    }

    async fn record_probe(&self, probe: ProbeRecord, audit: AuditEvent) -> Result<CredentialRow, StoreError> {
        let (m, c) = (probe.mailbox.clone(), probe.client.clone());
        self.write(&m, &c, self.inner.record_probe(probe, audit)).await
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<CredentialRow>, StoreError> {
        self.inner.list(query).await
    }

    async fn list_unused(&self, query: UnusedQuery) -> Result<Vec<CredentialRow>, StoreError> {
        self.inner.list_unused(query).await
    }

    async fn record_reveals(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        // last_used_at changes: drop those rows so the next read sees it.
        let pairs: Vec<(String, String)> = events.iter().map(|e| (e.mailbox.clone(), e.client.clone())).collect();
        let out = self.inner.record_reveals(events).await;
        for (m, c) in pairs {
            self.forget(&m, &c);
        }
        out
    }

    async fn count_by_state(&self) -> Result<(u64, u64), StoreError> {
        self.inner.count_by_state().await
    }

    async fn count_by_outcome(&self) -> Result<Vec<(Option<ProbeOutcome>, u64)>, StoreError> {
        self.inner.count_by_outcome().await
    }

    async fn due_for_verification(&self, before: Millis, limit: usize) -> Result<Vec<CredentialRow>, StoreError> {
        self.inner.due_for_verification(before, limit).await
    }

    async fn sealed_before(&self, active: KeyId, limit: usize) -> Result<Vec<CredentialRow>, StoreError> {
        self.inner.sealed_before(active, limit).await
    }

    async fn reseal(&self, batch: Vec<Reseal>) -> Result<usize, StoreError> {
        // Dropped before (a read racing the batch cannot cache its old row) and after.
        let pairs: Vec<(String, String)> = batch.iter().map(|r| (r.mailbox.clone(), r.client.clone())).collect();
        for (m, c) in &pairs {
            self.forget(m, c);
        }
        let out = self.inner.reseal(batch).await;
        for (m, c) in &pairs {
            self.forget(m, c);
        }
        out
    }
}

#[tonic::async_trait]
impl<S: Store> AuditStore for CachedStore<S> {
    async fn audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.inner.audit(event).await
    }

    async fn audit_events(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.audit_events(query).await
    }
}

#[tonic::async_trait]
impl<S: Store> TokenStore for CachedStore<S> {
    async fn insert_token(&self, row: TokenRow) -> Result<(), StoreError> {
        self.inner.insert_token(row).await
    }

    async fn tokens(&self) -> Result<Vec<Result<TokenRow, UnreadableToken>>, StoreError> {
        self.inner.tokens().await
    }

    async fn revoke_token(&self, id: String, now: Millis) -> Result<(), StoreError> {
        self.inner.revoke_token(id, now).await
    }

    async fn record_token_use(&self, uses: Vec<(String, Millis)>) -> Result<(), StoreError> {
        self.inner.record_token_use(uses).await
    }

    async fn rekey_tokens(&self, batch: Vec<TokenRekey>) -> Result<usize, StoreError> {
        self.inner.rekey_tokens(batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KdfParams, Key, Keyring, Salt};
    use crate::ids::{ClientId, Mailbox};
    use crate::outcome::ProbeOutcome;
    use crate::store::{SqliteStore, StoredCode};

    fn event() -> AuditEvent {
        AuditEvent {
            at: 1,
            caller: "t".into(),
            caller_role: "admin".into(),
            rpc: "Bind".into(),
            mailbox: "a@sina.com".into(),
            client: "x".into(),
            outcome: "OK".into(),
            probe_outcome: None,
            count: 1,
            first_at: 1,
        }
    }

    #[tokio::test]
    async fn writes_through_the_cache_are_seen_and_capacity_is_respected() {
        let tmp = tempfile::tempdir().unwrap();
        let (ring, wrapped) = Keyring::generate(&Key::random());
        let material = UnlockMaterial { salt: Salt([0; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
        let store = CachedStore::new(SqliteStore::create(&tmp.path().join("v.db"), &material, 0).unwrap(), 1);
        let (m, c) = (Mailbox::parse("a@sina.com").unwrap(), ClientId::parse("x").unwrap());
        let (key_id, generation, sealed) = ring.seal_code(m.as_str(), c.as_str(), 1, b"code");
        let new = NewBinding {
            mailbox: m,
            client: c,
            provider: "sina".into(),
            code: StoredCode { key_id, generation: Some(generation), sealed },
            now: 1,
            probe_outcome: ProbeOutcome::Accepted,
        };
        store.bind(new, event(), None).await.unwrap();
        assert_eq!(store.get("a@sina.com", "x").await.unwrap().version, 1);
        assert_eq!(store.cache.read().unwrap().len, 1);
        let revoke = RevokeChange { mailbox: "a@sina.com".into(), client: "x".into(), reason: "gone".into(), now: 2 };
        store.revoke(revoke, event(), None).await.unwrap();
        assert!(store.get("a@sina.com", "x").await.unwrap().code.is_none(), "stale row after revoke");
        assert_eq!(store.cache.read().unwrap().len, 1);
        // Full: another pair is read but not cached.
        assert!(matches!(store.get("b@sina.com", "x").await, Err(StoreError::NotFound)));
        assert_eq!(store.cache.read().unwrap().len, 1);
    }
}

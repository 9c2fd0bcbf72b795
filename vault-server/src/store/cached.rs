//! A read-through cache of credential rows in front of another store, so that a Reveal costs no
//! SQLite read (and no file-lock syscalls). Every write through this store drops the rows it
//! touched, before and after it; a generation counter keeps a read that raced a write from
//! caching a stale row. The cache is bounded: once full, it starts over empty. A row is cached
//! on its second miss within a while (a [`Doorkeeper`]), so pairs read once, as in a spread over
//! many bindings, neither cost an insert nor push out the rows in steady use.
//!
//! When other processes write the same database (replicas on PostgreSQL), [`follow_changes`]
//! drops what they changed, read from the store's change log every [`FOLLOW_EVERY`]; the cache
//! serves only while its last good read began less than [`TRUST_FOR`] ago, so a Revoke on
//! another replica is honoured here within that, also when the log cannot be read.
//!
//! [`follow_changes`]: CachedStore::follow_changes

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{
    AuditEvent, AuditQuery, AuditRecord, AuditStore, Bucket, Changes, CredentialRow, CredentialStore, DataKeyInfo,
    DuePosition, KeyMaterialStore, ListQuery, Millis, NewBinding, ProbeRecord, RecordedAnswer, RequestKey,
    RequestRecord, Reseal, Retirement, RevokeChange, RotateChange, Store, StoreError, StoredRequest, TokenRekey,
    TokenRow, TokenStore, UnlockMaterial, UnreadableToken, UnusedQuery,
};
use crate::crypto::{KeyId, Salt, WrappedKey};
use crate::outcome::ProbeOutcome;

/// Rows kept; about 750 bytes each. Small, because a miss on SQLite is a point read on the
/// calling thread (a few microseconds): the cache saves that for the pairs in steady use, and a
/// million rows would cost far more memory than they save time.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// How often a cache over a shared database reads its change log.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// How long a good read of the change log vouches for the cache.
pub const TRUST_FOR: Duration = Duration::from_secs(1);

/// Millis on a monotonic clock (since the first call): a wall clock stepped back must not
/// stretch the trust window.
fn now_millis() -> Millis {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)
}

type Rows = HashMap<String, HashMap<String, Arc<CredentialRow>>>;

/// The cache's admission: which pairs missed since its last reset, as two bits each in a
/// fixed bit array (lock-free, so a miss that is not admitted takes no lock), cleared every
/// `4 x capacity` misses. At least 32 bits per miss in a period keep false admissions (a first
/// miss whose two bits others set) under 0.4%.
struct Doorkeeper {
    bits: Box<[AtomicU64]>,
    mask: usize,
    hasher: RandomState,
    misses: AtomicUsize,
    reset_after: usize,
}

impl Doorkeeper {
    fn new(capacity: usize) -> Self {
        let reset_after = capacity.max(1).saturating_mul(4);
        let words = (reset_after.saturating_mul(32) / 64).max(1).next_power_of_two();
        Self {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            mask: words.saturating_mul(64) - 1,
            hasher: RandomState::new(),
            misses: AtomicUsize::new(0),
            reset_after,
        }
    }

    /// Whether the pair missed before since the last reset; marks it as missed.
    fn admit(&self, mailbox: &str, client: &str) -> bool {
        if self.misses.fetch_add(1, Ordering::Relaxed) + 1 == self.reset_after {
            // Exactly one miss per period counts to `reset_after`; a miss racing its reset is at
            // worst admitted a miss late.
            self.misses.store(0, Ordering::Relaxed);
            for word in &self.bits {
                word.store(0, Ordering::Relaxed);
            }
        }
        let hash = self.hasher.hash_one((mailbox, client));
        #[allow(clippy::cast_possible_truncation)] // only the low bits are used
        let (a, b) = (hash as usize & self.mask, (hash >> 32) as usize & self.mask);
        let mut seen = true;
        for bit in [a, b] {
            let flag = 1u64 << (bit % 64);
            seen &= self.bits[bit / 64].fetch_or(flag, Ordering::Relaxed) & flag != 0;
        }
        seen
    }
}

#[derive(Debug, Default)]
struct Cache {
    rows: Rows,
    len: usize,
}

/// `inner` plus the row cache.
pub struct CachedStore<S> {
    inner: S,
    cache: RwLock<Cache>,
    doorkeeper: Doorkeeper,
    generation: AtomicU64,
    capacity: usize,
    /// Millis until which the cache may serve: forever over a database no one else writes,
    /// else the start of the last good change-log read plus [`TRUST_FOR`].
    trusted_until: AtomicI64,
}

impl<S> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl<S: Store> CachedStore<S> {
    pub fn new(inner: S, capacity: usize) -> Self {
        let trusted_until = AtomicI64::new(if inner.shared() { Millis::MIN } else { Millis::MAX });
        Self {
            inner,
            cache: RwLock::new(Cache::default()),
            doorkeeper: Doorkeeper::new(capacity),
            generation: AtomicU64::new(0),
            capacity,
            trusted_until,
        }
    }

    fn trusted(&self) -> bool {
        let until = self.trusted_until.load(Ordering::Acquire);
        until == Millis::MAX || now_millis() < until
    }

    /// Drops every row.
    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut cache = self.write_cache();
        cache.rows.clear();
        cache.len = 0;
    }

    /// Reads the change log once, dropping what changed; returns the next cursor. A cache that
    /// is no longer trusted (reads failed for longer than [`TRUST_FOR`]) starts over from empty.
    async fn follow_once(&self, cursor: Option<u64>) -> Result<u64, StoreError> {
        let started = now_millis();
        let cursor = if self.trusted() { cursor } else { None };
        let Changes { pairs, all, cursor: next } = self.inner.changes_since(cursor).await?;
        if all || cursor.is_none() {
            self.forget_all();
        } else {
            for (m, c) in &pairs {
                self.forget(m, c);
            }
        }
        let trust = i64::try_from(TRUST_FOR.as_millis()).unwrap_or(i64::MAX);
        self.trusted_until.fetch_max(started.saturating_add(trust), Ordering::AcqRel);
        Ok(next)
    }

    /// Follows the change log of a shared database for as long as the server runs (returns at
    /// once over one that is not shared).
    pub async fn follow_changes(&self) {
        if !self.inner.shared() {
            return;
        }
        let mut cursor = None;
        // The last failure's error, logged once (and again when the error changes).
        let mut failing: Option<String> = None;
        loop {
            match self.follow_once(cursor).await {
                Ok(next) => {
                    if failing.take().is_some() {
                        tracing::info!("the change log is read again; the row cache serves again");
                    }
                    cursor = Some(next);
                }
                Err(e) => {
                    let said = e.to_string();
                    if failing.as_ref() != Some(&said) {
                        tracing::warn!(error = %said, "cannot read the change log; the row cache stops serving within a second");
                    }
                    failing = Some(said);
                }
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
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

    /// Caches a row read while the generation was `generation` (on its second miss), unless a
    /// write happened since the read began. A full cache starts over: the rows in use come back
    /// on their next misses, the rest no longer take memory.
    fn keep(&self, mailbox: &str, client: &str, generation: u64, row: &Arc<CredentialRow>) {
        if !self.doorkeeper.admit(mailbox, client) {
            return;
        }
        let mut cache = self.write_cache();
        if self.generation.load(Ordering::Acquire) != generation || !self.trusted() {
            return;
        }
        if cache.len >= self.capacity {
            cache.rows.clear();
            cache.len = 0;
        }
        let previous = cache.rows.entry(mailbox.to_owned()).or_default().insert(client.to_owned(), row.clone());
        if previous.is_none() {
            cache.len += 1;
        }
    }

    fn lookup(&self, mailbox: &str, client: &str) -> Option<Arc<CredentialRow>> {
        if !self.trusted() {
            return None;
        }
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

    fn destruction_owed(&self) -> bool {
        self.inner.destruction_owed()
    }

    fn scrubs_files(&self) -> bool {
        self.inner.scrubs_files()
    }
}

#[tonic::async_trait]
impl<S: Store> CredentialStore for CachedStore<S> {
    fn shared(&self) -> bool {
        self.inner.shared()
    }

    async fn changes_since(&self, cursor: Option<u64>) -> Result<Changes, StoreError> {
        self.inner.changes_since(cursor).await
    }

    /// Once taken, the pair's row is read afresh: another replica may have changed it
    /// moments ago.
    async fn lease_pair(
        &self,
        mailbox: &str,
        client: &str,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        let taken = self.inner.lease_pair(mailbox, client, holder, now, until).await?;
        if taken && self.inner.shared() {
            self.forget(mailbox, client);
        }
        Ok(taken)
    }

    async fn renew_pair(
        &self,
        mailbox: &str,
        client: &str,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        self.inner.renew_pair(mailbox, client, holder, now, until).await
    }

    async fn release_pair(&self, mailbox: String, client: String, holder: String) -> Result<(), StoreError> {
        self.inner.release_pair(mailbox, client, holder).await
    }

    async fn take_host_slot(
        &self,
        host: &str,
        cap: u32,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        self.inner.take_host_slot(host, cap, holder, now, until).await
    }

    async fn release_host_slot(&self, host: String, holder: String) -> Result<(), StoreError> {
        self.inner.release_host_slot(host, holder).await
    }

    async fn take_probe(
        &self,
        mailbox: &str,
        now: Millis,
        bucket: Bucket,
    ) -> Result<Option<Result<(), Duration>>, StoreError> {
        self.inner.take_probe(mailbox, now, bucket).await
    }

    /// A cached row, or the engine's own read on this thread (cached then).
    fn get_here(&self, mailbox: &str, client: &str) -> Option<Result<Arc<CredentialRow>, StoreError>> {
        if let Some(row) = self.lookup(mailbox, client) {
            return Some(Ok(row));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let row = match self.inner.get_here(mailbox, client)? {
            Ok(row) => row,
            Err(e) => return Some(Err(e)),
        };
        self.keep(mailbox, client, generation, &row);
        Some(Ok(row))
    }

    async fn get(&self, mailbox: &str, client: &str) -> Result<Arc<CredentialRow>, StoreError> {
        if let Some(row) = self.get_here(mailbox, client) {
            return row;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let row = self.inner.get(mailbox, client).await?;
        self.keep(mailbox, client, generation, &row);
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
        let uses: Vec<(String, String, Millis)> =
            events.iter().map(|e| (e.mailbox.clone(), e.client.clone(), e.at)).collect();
        self.inner.record_reveals(events).await?;
        // Only last_used_at changed: the cached rows keep serving with it set as the store now
        // has it (the latest use), rather than being dropped and read again. A read that raced
        // the flush does not cache its row.
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut cache = self.write_cache();
        for (m, c, at) in uses {
            if let Some(row) = cache.rows.get_mut(&m).and_then(|r| r.get_mut(&c))
                && row.last_used_at.is_none_or(|last| last < at)
            {
                Arc::make_mut(row).last_used_at = Some(at);
            }
        }
        Ok(())
    }

    async fn count_by_state(&self) -> Result<(u64, u64), StoreError> {
        self.inner.count_by_state().await
    }

    async fn count_by_outcome(&self) -> Result<Vec<(Option<ProbeOutcome>, u64)>, StoreError> {
        self.inner.count_by_outcome().await
    }

    async fn due_for_verification(
        &self,
        before: Millis,
        after: Option<DuePosition>,
        limit: usize,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        self.inner.due_for_verification(before, after, limit).await
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
            reason: String::new(),
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
        // Cached on its second miss.
        assert_eq!(store.get("a@sina.com", "x").await.unwrap().version, 1);
        assert_eq!(store.cache.read().unwrap().len, 0);
        assert_eq!(store.get("a@sina.com", "x").await.unwrap().version, 1);
        assert_eq!(store.cache.read().unwrap().len, 1);
        // A usage flush keeps the row cached, with its new last use.
        let used = AuditEvent { rpc: "Reveal".into(), at: 7, ..event() };
        store.record_reveals(vec![used]).await.unwrap();
        assert_eq!(store.lookup("a@sina.com", "x").expect("dropped by a usage flush").last_used_at, Some(7));
        assert_eq!(store.inner().get("a@sina.com", "x").await.unwrap().last_used_at, Some(7));
        let revoke = RevokeChange { mailbox: "a@sina.com".into(), client: "x".into(), reason: "gone".into(), now: 2 };
        store.revoke(revoke, event(), None).await.unwrap();
        assert!(store.get("a@sina.com", "x").await.unwrap().code.is_none(), "stale row after revoke");
        assert_eq!(store.cache.read().unwrap().len, 1);
        // A pair that is not there is not cached.
        assert!(matches!(store.get("b@sina.com", "x").await, Err(StoreError::NotFound)));
        assert_eq!(store.cache.read().unwrap().len, 1);
        // Full: another row starts the cache over.
        let (key_id, generation, sealed) = ring.seal_code("c@sina.com", "x", 1, b"code");
        let other = NewBinding {
            mailbox: Mailbox::parse("c@sina.com").unwrap(),
            client: ClientId::parse("x").unwrap(),
            provider: "sina".into(),
            code: StoredCode { key_id, generation: Some(generation), sealed },
            now: 1,
            probe_outcome: ProbeOutcome::Accepted,
        };
        store.bind(other, event(), None).await.unwrap();
        store.get("c@sina.com", "x").await.unwrap();
        store.get("c@sina.com", "x").await.unwrap();
        let cache = store.cache.read().unwrap();
        assert_eq!(cache.len, 1);
        assert!(cache.rows.contains_key("c@sina.com") && !cache.rows.contains_key("a@sina.com"));
    }

    #[test]
    fn the_doorkeeper_admits_a_second_miss_and_forgets_after_four_times_the_capacity() {
        let door = Doorkeeper::new(100);
        assert!(!door.admit("a@sina.com", "x"), "admitted on its first miss");
        assert!(door.admit("a@sina.com", "x"), "not admitted on its second miss");
        assert!(!door.admit("a@sina.com", "y") && !door.admit("b@sina.com", "x"), "another pair shares its bits");
        // The 400th miss of a period clears it: remembered at the 399th, forgotten after.
        let admitted = (0..394).filter(|i| door.admit(&format!("m{i}@sina.com"), "x")).count();
        assert!(admitted < 10, "{admitted} of 394 new pairs admitted on their first miss");
        assert!(door.admit("a@sina.com", "x"), "forgotten before the end of its period");
        let _ = door.admit("m-last@sina.com", "x");
        assert!(!door.admit("a@sina.com", "x"), "remembered past the reset");
        assert!(door.admit("a@sina.com", "x"), "not admitted on its second miss of the new period");
    }
}

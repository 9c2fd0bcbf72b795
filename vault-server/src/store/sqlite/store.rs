//! The async face of the SQLite engine: the store traits, each call run on the blocking pool
//! (but a point read, which is cheaper than the hop: [`Db::get_here`]).

use std::path::Path;
use std::sync::Arc;

use super::Db;
use crate::crypto::{KeyId, Salt, WrappedKey};
use crate::outcome::ProbeOutcome;
use crate::store::{
    AuditEvent, AuditQuery, AuditRecord, AuditStore, CredentialRow, CredentialStore, DataKeyInfo, DuePosition,
    KeyMaterialStore, ListQuery, Millis, NewBinding, ProbeRecord, RecordedAnswer, RequestKey, RequestRecord, Reseal,
    Retirement, RevokeChange, RotateChange, StoreError, StoredRequest, TokenRekey, TokenRow, TokenStore,
    UnlockMaterial, UnreadableToken, UnusedQuery,
};

/// The async face of [`Db`]: every call but a point read runs on the blocking pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Arc<Db>,
}

impl SqliteStore {
    /// Creates a new database file (mode 0600) holding the unlock material. Fails if it exists.
    pub fn create(path: &Path, material: &UnlockMaterial, now: i64) -> Result<Self, StoreError> {
        Ok(Self { db: Arc::new(Db::create(path, material, now)?) })
    }

    /// Opens an existing database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self { db: Arc::new(Db::open(path)?) })
    }

    /// The synchronous engine, for callers outside the async runtime (the CLI, tools).
    pub fn sync(&self) -> &Db {
        &self.db
    }

    /// Runs `f` on the blocking pool; a panic there is re-raised here.
    async fn hop<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Unavailable(format!("storage task cancelled: {e}"))),
        }
    }
}

#[tonic::async_trait]
impl KeyMaterialStore for SqliteStore {
    async fn unlock_material(&self) -> Result<UnlockMaterial, StoreError> {
        self.hop(Db::unlock_material).await
    }

    async fn data_keys(&self) -> Result<Vec<DataKeyInfo>, StoreError> {
        self.hop(Db::data_keys).await
    }

    async fn add_data_key(&self, salt: Salt, key: WrappedKey, now: Millis) -> Result<(), StoreError> {
        self.hop(move |db| db.add_data_key(&salt, &key, now)).await
    }

    async fn retire_data_keys(&self, active: KeyId, invalid_tokens: Vec<String>) -> Result<Retirement, StoreError> {
        self.hop(move |db| db.retire_data_keys(active, &invalid_tokens)).await
    }

    /// One attempt that does not wait for readers: callers retry (a key rotation, the owed
    /// truncation's retries).
    async fn destroy_freed(&self) -> Result<bool, StoreError> {
        self.hop(super::Db::shred_wal_now).await
    }

    fn destruction_owed(&self) -> bool {
        self.sync().shred_owed()
    }
}

#[tonic::async_trait]
impl CredentialStore for SqliteStore {
    async fn get(&self, mailbox: &str, client: &str) -> Result<Arc<CredentialRow>, StoreError> {
        let (m, c) = (mailbox.to_owned(), client.to_owned());
        self.hop(move |db| db.get(&m, &c)).await
    }

    fn get_here(&self, mailbox: &str, client: &str) -> Option<Result<Arc<CredentialRow>, StoreError>> {
        self.db.get_here(mailbox, client)
    }

    async fn bind(
        &self,
        new: NewBinding,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        self.hop(move |db| db.bind(&new, &audit, request)).await
    }

    async fn import(&self, rows: Vec<NewBinding>, audit: AuditEvent) -> Result<(), StoreError> {
        self.hop(move |db| db.import(&rows, &audit)).await
    }

    async fn rotate(
        &self,
        change: RotateChange,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        self.hop(move |db| db.rotate(&change, &audit, request)).await
    }

    async fn revoke(
        &self,
        change: RevokeChange,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        self.hop(move |db| db.revoke(&change, &audit, request)).await
    }

    async fn find_request(&self, caller: String, request_id: String) -> Result<Option<StoredRequest>, StoreError> {
        self.hop(move |db| db.find_request(&caller, &request_id)).await
    }

    async fn update_request_answer(&self, key: RequestKey, answer: RecordedAnswer) -> Result<(), StoreError> {
        self.hop(move |db| db.update_request_answer(&key, &answer)).await
    }

    async fn record_probe(&self, probe: ProbeRecord, audit: AuditEvent) -> Result<CredentialRow, StoreError> {
        self.hop(move |db| db.record_probe(&probe, &audit)).await
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<CredentialRow>, StoreError> {
        self.hop(move |db| db.list(&query)).await
    }

    async fn list_unused(&self, query: UnusedQuery) -> Result<Vec<CredentialRow>, StoreError> {
        self.hop(move |db| db.list_unused(&query)).await
    }

    async fn record_reveals(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.hop(move |db| db.record_reveals(&events)).await
    }

    async fn count_by_state(&self) -> Result<(u64, u64), StoreError> {
        self.hop(Db::count_by_state).await
    }

    async fn count_by_outcome(&self) -> Result<Vec<(Option<ProbeOutcome>, u64)>, StoreError> {
        self.hop(Db::count_by_outcome).await
    }

    async fn due_for_verification(
        &self,
        before: Millis,
        after: Option<DuePosition>,
        limit: usize,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        self.hop(move |db| db.due_for_verification(before, after.as_ref(), limit)).await
    }

    async fn sealed_before(&self, active: KeyId, limit: usize) -> Result<Vec<CredentialRow>, StoreError> {
        self.hop(move |db| db.sealed_before(active, limit)).await
    }

    async fn reseal(&self, batch: Vec<Reseal>) -> Result<usize, StoreError> {
        self.hop(move |db| db.reseal(&batch)).await
    }
}

#[tonic::async_trait]
impl AuditStore for SqliteStore {
    async fn audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.hop(move |db| db.audit(&event)).await
    }

    async fn audit_events(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.hop(move |db| db.audit_events(&query)).await
    }
}

#[tonic::async_trait]
impl TokenStore for SqliteStore {
    async fn insert_token(&self, row: TokenRow) -> Result<(), StoreError> {
        self.hop(move |db| db.insert_token(&row)).await
    }

    async fn tokens(&self) -> Result<Vec<Result<TokenRow, UnreadableToken>>, StoreError> {
        self.hop(Db::tokens).await
    }

    async fn revoke_token(&self, id: String, now: Millis) -> Result<(), StoreError> {
        self.hop(move |db| db.revoke_token(&id, now)).await
    }

    async fn record_token_use(&self, uses: Vec<(String, Millis)>) -> Result<(), StoreError> {
        self.hop(move |db| db.record_token_use(&uses)).await
    }

    async fn rekey_tokens(&self, batch: Vec<TokenRekey>) -> Result<usize, StoreError> {
        self.hop(move |db| db.rekey_tokens(&batch)).await
    }
}

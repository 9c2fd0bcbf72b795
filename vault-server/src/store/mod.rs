//! Persistence behind traits split by concern (key material, credentials, audit, token rows),
//! so that another engine (PostgreSQL for several stateless replicas) can follow. The traits are
//! async and speak only [`StoreError`](crate::store::StoreError): an engine that blocks (SQLite) makes its own hop off the
//! async workers. Every engine must pass the contract suite in `contract.rs`.

mod cached;
#[cfg(test)]
pub(crate) mod contract;
mod postgres;
mod sqlite;
/// Fresh PostgreSQL databases for tests outside the backend (a vault of replicas).
#[cfg(test)]
pub(crate) use postgres::testdb;

pub use cached::{CachedStore, DEFAULT_CAPACITY};
pub use postgres::{Batch, Moved, PgStore};
pub use sqlite::{Db as SqliteDb, SqliteStore};
/// The fuzz entry point for stored rows (not an API).
#[doc(hidden)]
pub use sqlite::{PLANTABLE_TABLES, ReadBack, plant_and_read};

use std::sync::Arc;

use crate::crypto::{Generation, KdfParams, KeyId, Salt, Sealed, WrappedKey};
use crate::ids::{ClientId, Mailbox};
use crate::outcome::ProbeOutcome;

/// Unix time in milliseconds.
pub type Millis = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such binding")]
    NotFound,
    #[error("the pair already has an active code")]
    AlreadyExists,
    #[error("the binding changed concurrently")]
    Conflict,
    #[error("the binding is revoked")]
    Revoked,
    #[error("the data dir is not initialised")]
    NotInitialised,
    #[error("the database is damaged: {0}")]
    Corrupt(String),
    /// The disk (or the database's quota) is full; nothing was written.
    #[error("the database is full")]
    Full,
    /// The database cannot be written or reached (read-only, missing, I/O error, locked too long).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The connection was lost while a COMMIT was under way: the change may or may not have
    /// been made (a request id remembered with it tells, on a retry).
    #[error("the database connection was lost while committing, so the change may have been made: {0}")]
    OutcomeUnknown(String),
    /// Any other engine error, described.
    #[error("database error: {0}")]
    Backend(String),
    /// A request id remembered meanwhile by another call of the same caller; nothing was written.
    #[error("the request id was taken by another call")]
    RequestIdTaken,
}

/// `name` as an SQL identifier in a message; Debug-escaped if it holds control characters, so
/// that a log line stays one line.
fn quoted(name: &str) -> String {
    if name.chars().any(char::is_control) { format!("{name:?}") } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

/// Whether a binding holds a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialState {
    Active = 1,
    Revoked = 2,
}

/// What Argon2id needs to re-derive the KEK, plus the wrapped DEKs.
#[derive(Debug, Clone)]
pub struct UnlockMaterial {
    pub salt: Salt,
    pub params: KdfParams,
    pub keys: Vec<WrappedKey>,
}

impl UnlockMaterial {
    /// A new vault's: a fresh salt, the KDF floor, and one data key wrapped under the KEK.
    pub fn generate(passphrase: &crate::secret::Passphrase) -> Result<Self, crate::crypto::CryptoError> {
        let (salt, params) = (Salt::random(), KdfParams::FLOOR);
        let kek = crate::crypto::derive_kek(passphrase, &salt, params)?;
        let (_, wrapped) = crate::crypto::Keyring::generate(&kek);
        Ok(Self { salt, params, keys: vec![wrapped] })
    }

    /// Re-derives the KEK and unwraps the data keys; a wrong passphrase is `Decrypt`.
    pub fn open(
        &self,
        passphrase: &crate::secret::Passphrase,
    ) -> Result<(crate::crypto::Keyring, crate::crypto::Kek), crate::crypto::CryptoError> {
        let key = crate::crypto::derive_kek(passphrase, &self.salt, self.params)?;
        let keyring = crate::crypto::Keyring::unlock(&key, &self.keys)?;
        Ok((keyring, crate::crypto::Kek { key, salt: self.salt }))
    }
}

/// A code as stored: the key that sealed it, the seal's generation (bound into the AAD; `None`
/// for rows sealed before generations existed), and the sealed bytes.
#[derive(Debug, Clone)]
pub struct StoredCode {
    pub key_id: u32,
    pub generation: Option<Generation>,
    pub sealed: Sealed,
}

/// One binding's row.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    pub mailbox: String,
    pub client: String,
    pub provider: String,
    pub state: CredentialState,
    pub version: u64,
    pub code: Option<StoredCode>,
    pub created_at: Millis,
    pub rotated_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    pub revoke_reason: Option<String>,
    pub last_used_at: Option<Millis>,
    pub last_verified_at: Option<Millis>,
    pub last_probe_outcome: Option<ProbeOutcome>,
}

impl CredentialRow {
    /// The precondition of a change to the row inside its write transaction: still active and,
    /// when `version` is given, still at it (`Revoked`, `Conflict`).
    pub fn check_current(&self, version: Option<u64>) -> Result<(), StoreError> {
        if self.state != CredentialState::Active {
            return Err(StoreError::Revoked);
        }
        if version.is_some_and(|v| v != self.version) {
            return Err(StoreError::Conflict);
        }
        Ok(())
    }
}

/// A fresh binding to insert after its probe was accepted.
#[derive(Debug, Clone)]
pub struct NewBinding {
    pub mailbox: Mailbox,
    pub client: ClientId,
    pub provider: String,
    pub code: StoredCode,
    pub now: Millis,
    pub probe_outcome: ProbeOutcome,
}

/// A rotate: the row must still be active at `from_version`; it moves to `from_version + 1`.
#[derive(Debug, Clone)]
pub struct RotateChange {
    pub mailbox: String,
    pub client: String,
    pub from_version: u64,
    pub code: StoredCode,
    pub now: Millis,
}

/// A revoke: the ciphertext goes, a tombstone with the reason stays.
#[derive(Debug, Clone)]
pub struct RevokeChange {
    pub mailbox: String,
    pub client: String,
    pub reason: String,
    pub now: Millis,
}

/// A remembered answer: the encoded response and a MAC over the whole request row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAnswer {
    pub bytes: Vec<u8>,
    pub mac: Vec<u8>,
}

/// Encodes a remembered request's answer from the row as committed.
pub type AnswerEncoder = Box<dyn FnOnce(&CredentialRow) -> RecordedAnswer + Send>;

/// A Bind, Rotate or Revoke that carried a request id, remembered in the write's transaction
/// with the answer it gave, so that a retry is answered the same without running again.
pub struct RequestRecord {
    /// Token id of the caller: ids are per caller.
    pub caller: String,
    pub request_id: String,
    pub rpc: &'static str,
    /// HMAC of the request under a key derived from data key `key_id`.
    pub fingerprint: Vec<u8>,
    pub key_id: KeyId,
    /// The row's creation time (part of its MAC).
    pub now: Millis,
    /// Remembered requests older than this are deleted in the same transaction.
    pub forget_before: Millis,
    /// Encodes the answer from the row as committed.
    pub answer: AnswerEncoder,
}

impl std::fmt::Debug for RequestRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestRecord")
            .field("caller", &self.caller)
            .field("request_id", &self.request_id)
            .field("rpc", &self.rpc)
            .finish_non_exhaustive()
    }
}

/// Which remembered request row: the caller's id, and the RPC and time it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub caller: String,
    pub request_id: String,
    pub rpc: &'static str,
    pub created_at: Millis,
}

/// A remembered request, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    pub rpc: String,
    pub fingerprint: Vec<u8>,
    pub key_id: KeyId,
    pub answer: RecordedAnswer,
    pub created_at: Millis,
}

/// A probe of the code at `version`, to record on the row.
#[derive(Debug, Clone)]
pub struct ProbeRecord {
    pub mailbox: String,
    pub client: String,
    pub version: u64,
    pub outcome: ProbeOutcome,
    pub now: Millis,
}

/// One audit event, written in the same transaction as the change it records. Reveals are
/// aggregated: `count` uses between `first_at` and `at`.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at: Millis,
    /// Token id of the caller.
    pub caller: String,
    pub caller_role: String,
    pub rpc: String,
    pub mailbox: String,
    pub client: String,
    pub outcome: String,
    pub probe_outcome: Option<ProbeOutcome>,
    pub count: u64,
    pub first_at: Millis,
    /// A Revoke's reason, as given; empty otherwise.
    pub reason: String,
}

/// A caller token as stored: never the token, only its digest, and a MAC over the row.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub role: String,
    pub digest: Vec<u8>,
    pub key_id: u32,
    pub mac: Vec<u8>,
    pub created_at: Millis,
    pub last_used_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

/// A token row that cannot be read as one (a value out of range or of the wrong type): reported
/// by id and skipped, never failing the whole table.
#[derive(Debug, Clone)]
pub struct UnreadableToken {
    pub id: String,
    pub reason: String,
}

/// An audit event as read back.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: i64,
    pub event: AuditEvent,
}

/// Filters and keyset position for the audit trail, newest first.
#[derive(Debug, Default, Clone)]
pub struct AuditQuery {
    pub mailbox: Option<String>,
    pub client: Option<String>,
    pub caller: Option<String>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Only events before this (time, id) keyset position: the list is newest first by time.
    pub before: Option<(Millis, i64)>,
    pub limit: usize,
}

/// The quarterly review: active bindings whose last activity (last use, else binding time) is
/// before `cutoff`, ordered by that activity, then mailbox and client.
#[derive(Debug, Clone)]
pub struct UnusedQuery {
    pub cutoff: Millis,
    pub mailbox: Option<String>,
    /// Only rows after this (activity, mailbox, client) position.
    pub after: Option<(Millis, String, String)>,
    pub limit: usize,
}

/// A position among the rows due for verification: (last verified, else bound; mailbox; client).
pub type DuePosition = (Millis, String, String);

impl CredentialRow {
    /// This row's position among the rows due for verification.
    pub fn due_position(&self) -> DuePosition {
        (self.last_verified_at.unwrap_or(self.created_at), self.mailbox.clone(), self.client.clone())
    }
}

/// Filters and keyset position for listing credentials, ordered by (mailbox, client).
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub mailbox: Option<String>,
    pub client: Option<String>,
    pub include_revoked: bool,
    /// Only active bindings whose last probe had this outcome.
    pub last_probe_outcome: Option<ProbeOutcome>,
    /// Only active bindings last verified (or, never verified, bound) before this.
    pub verified_before: Option<Millis>,
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// A data key as listed: its id and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataKeyInfo {
    pub key_id: KeyId,
    pub created_at: Millis,
}

/// A code sealed again (under another key): it replaces the row's seal only if the row still
/// holds `old_ciphertext` under `old_key_id` at `version` (the raw bytes, whatever else in the row
/// is malformed), so a concurrent change is never overwritten.
#[derive(Debug, Clone)]
pub struct Reseal {
    pub mailbox: String,
    pub client: String,
    pub version: u64,
    pub old_key_id: KeyId,
    pub old_ciphertext: Vec<u8>,
    pub code: StoredCode,
}

/// A token row moved to another data key, with its MAC under that key (empty for a row that
/// had no valid MAC: it stays refused). Applied only if the row still has `old_key_id` and
/// `old_mac`.
#[derive(Debug, Clone)]
pub struct TokenRekey {
    pub id: String,
    pub old_key_id: KeyId,
    pub old_mac: Vec<u8>,
    pub key_id: KeyId,
    pub mac: Vec<u8>,
}

/// What deleting the keys older than the active one did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retirement {
    /// Keys deleted.
    pub retired: Vec<KeyId>,
    /// Active codes still sealed under an older key (written meanwhile): nothing was deleted.
    pub pending_codes: u64,
    /// Token rows still under an older key that were not named invalid (minted meanwhile):
    /// nothing was deleted.
    pub pending_tokens: u64,
    /// Whether the deleted wrappings already left the live files (see
    /// [`KeyMaterialStore::destroy_freed`]); `true` when nothing was deleted.
    pub destroyed: bool,
}

/// A probe budget's shape: `burst` probes at once, refilled at `per_sec`; a take succeeds only
/// if `keep` are left after it.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub burst: f64,
    pub per_sec: f64,
    pub keep: f64,
}

/// What [`CredentialStore::changes_since`] found.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Pairs to drop.
    pub pairs: Vec<(String, String)>,
    /// Drop everything (the first read, or a change to the whole table).
    pub all: bool,
    /// Where the next read starts.
    pub cursor: u64,
}

/// Salt, KDF parameters and wrapped data keys.
#[tonic::async_trait]
pub trait KeyMaterialStore: Send + Sync + 'static {
    /// `NotInitialised` if there are none.
    async fn unlock_material(&self) -> Result<UnlockMaterial, StoreError>;
    /// The data keys, oldest first.
    async fn data_keys(&self) -> Result<Vec<DataKeyInfo>, StoreError>;
    /// Stores a new data key, wrapped under the KEK derived with `salt`. `Conflict` if the salt
    /// is no longer `salt` (the passphrase changed: the key would be wrapped under a KEK no
    /// passphrase derives); `AlreadyExists` if the key id is taken.
    async fn add_data_key(&self, salt: Salt, key: WrappedKey, now: Millis) -> Result<(), StoreError>;
    /// Deletes every data key older than `active`, in one transaction, once no active code and
    /// no token row is left under one: token rows under one that are revoked (no MAC) or named in
    /// `invalid_tokens` (no valid MAC) move to `active` first; any other keeps the keys (pending).
    /// Then tries to destroy the deleted wrappings in the live files.
    async fn retire_data_keys(&self, active: KeyId, invalid_tokens: Vec<String>) -> Result<Retirement, StoreError>;
    /// Makes rows deleted or overwritten so far unrecoverable from the live files (SQLite:
    /// checkpoint and truncate the WAL); `false` if readers kept it from finishing.
    async fn destroy_freed(&self) -> Result<bool, StoreError>;
    /// Whether a [`destroy_freed`](Self::destroy_freed) is owed: the last destroying change's
    /// did not finish, or the files held undestroyed bytes when opened. Never for an engine that
    /// does not scrub its files.
    fn destruction_owed(&self) -> bool {
        false
    }
    /// Whether [`destroy_freed`](Self::destroy_freed) can ever finish: `false` for an engine
    /// whose files belong to a database server (PostgreSQL keeps dead tuples until VACUUM and
    /// WAL until recycled), where only retiring the key protects what it sealed.
    fn scrubs_files(&self) -> bool {
        true
    }
}

/// Bindings. Each write is one transaction together with its audit event.
#[tonic::async_trait]
pub trait CredentialStore: Send + Sync + 'static {
    /// One binding; `NotFound` if the pair was never bound.
    async fn get(&self, mailbox: &str, client: &str) -> Result<Arc<CredentialRow>, StoreError>;
    /// [`get`](Self::get) done at once on the calling thread, when it takes microseconds and
    /// no waiting (a cache hit, an embedded engine's point read); `None` means use `get`. The
    /// Reveal hot path asks this first.
    fn get_here(&self, _mailbox: &str, _client: &str) -> Option<Result<Arc<CredentialRow>, StoreError>> {
        None
    }
    /// Whether other processes write this database too (replicas on PostgreSQL): a cache in
    /// front of it must follow [`changes_since`](Self::changes_since).
    fn shared(&self) -> bool {
        false
    }
    /// Pairs changed (by anyone) since `cursor`, for caches to drop; `None`: from now on, with
    /// `all` set. Engines that are not [`shared`](Self::shared) report nothing.
    async fn changes_since(&self, _cursor: Option<u64>) -> Result<Changes, StoreError> {
        Ok(Changes::default())
    }
    /// Takes the pair's lease for `holder` until `until` (a shared engine: one replica at a time
    /// changes a pair); `false` while another holder has it and `now` is before its expiry.
    /// Engines that are not shared always grant it (the process's own lock is enough).
    async fn lease_pair(
        &self,
        _mailbox: &str,
        _client: &str,
        _holder: &str,
        _now: Millis,
        _until: Millis,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Extends the pair's lease to `until` (as `until - now` on the database's clock) if `holder`
    /// still has it; `false` if it does not (given back, or expired and taken over), and then
    /// nothing is written. Engines that are not shared always say yes.
    async fn renew_pair(
        &self,
        _mailbox: &str,
        _client: &str,
        _holder: &str,
        _now: Millis,
        _until: Millis,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Gives the pair's lease back, if `holder` still has it.
    async fn release_pair(&self, _mailbox: String, _client: String, _holder: String) -> Result<(), StoreError> {
        Ok(())
    }
    /// Takes one of `cap` probe slots for `host` shared by every replica, for `holder` until
    /// `until` (on the database's clock, as `until - now`); `false` while all are held. Engines
    /// that are not shared always grant it (the process's own cap is enough).
    async fn take_host_slot(
        &self,
        _host: &str,
        _cap: u32,
        _holder: &str,
        _now: Millis,
        _until: Millis,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Gives `holder`'s slot for `host` back.
    async fn release_host_slot(&self, _host: String, _holder: String) -> Result<(), StoreError> {
        Ok(())
    }
    /// Takes one probe from `mailbox`'s budget shared by every replica (a token bucket of
    /// `burst`, refilled at `per_sec`) if `keep` are left after it; `Err(wait)` says when one
    /// will be. `None` from an engine that is not shared: the process's own budget applies.
    async fn take_probe(
        &self,
        _mailbox: &str,
        _now: Millis,
        _bucket: Bucket,
    ) -> Result<Option<Result<(), std::time::Duration>>, StoreError> {
        Ok(None)
    }
    /// Inserts a binding, or re-binds a revoked pair at version 1. `AlreadyExists` if active.
    /// `request`, if any, is remembered in the same transaction (as with rotate and revoke),
    /// after requests created before its `forget_before` are deleted; `RequestIdTaken` if its id
    /// is remembered already.
    async fn bind(
        &self,
        new: NewBinding,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError>;
    /// Inserts many new pairs in one transaction, with one audit event for the batch (bulk
    /// import and benchmarks; no probe). Fails, changing nothing, if any pair exists.
    async fn import(&self, rows: Vec<NewBinding>, audit: AuditEvent) -> Result<(), StoreError>;
    /// Swaps in a new code (version + 1), overwriting the old ciphertext. `Conflict` if the
    /// version moved, `Revoked` if revoked.
    async fn rotate(
        &self,
        change: RotateChange,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError>;
    /// Destroys the ciphertext and keeps a tombstone. `Revoked` if already revoked.
    async fn revoke(
        &self,
        change: RevokeChange,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError>;
    /// A remembered request of `caller`, if it is still kept.
    async fn find_request(&self, caller: String, request_id: String) -> Result<Option<StoredRequest>, StoreError>;
    /// Replaces a remembered request's answer (with what a probe after the commit found), if the
    /// row is still the one made for (`rpc`, `created_at`).
    async fn update_request_answer(&self, key: RequestKey, answer: RecordedAnswer) -> Result<(), StoreError>;
    /// Records a probe of the code at its version; `Conflict` if the row moved on meanwhile.
    async fn record_probe(&self, probe: ProbeRecord, audit: AuditEvent) -> Result<CredentialRow, StoreError>;
    /// A page of bindings.
    async fn list(&self, query: ListQuery) -> Result<Vec<CredentialRow>, StoreError>;
    /// A page of the quarterly review.
    async fn list_unused(&self, query: UnusedQuery) -> Result<Vec<CredentialRow>, StoreError>;
    /// Records aggregated Reveals: one audit event each, and the pairs' `last_used_at`, in one
    /// transaction.
    async fn record_reveals(&self, events: Vec<AuditEvent>) -> Result<(), StoreError>;
    /// Numbers of (active, revoked) bindings.
    async fn count_by_state(&self) -> Result<(u64, u64), StoreError>;
    /// Numbers of active bindings by their last probe's outcome (`None`: never probed).
    async fn count_by_outcome(&self) -> Result<Vec<(Option<ProbeOutcome>, u64)>, StoreError>;
    /// Up to `limit` active bindings last verified (or bound) before `before`, oldest first, from
    /// past `after` on: the ones a verification sweep is due to probe.
    async fn due_for_verification(
        &self,
        before: Millis,
        after: Option<DuePosition>,
        limit: usize,
    ) -> Result<Vec<CredentialRow>, StoreError>;
    /// Up to `limit` active bindings sealed under a key older than `active`.
    async fn sealed_before(&self, active: KeyId, limit: usize) -> Result<Vec<CredentialRow>, StoreError>;
    /// Applies re-seals in one transaction; returns how many rows still held their old seal (the
    /// others moved on meanwhile and were left alone).
    async fn reseal(&self, batch: Vec<Reseal>) -> Result<usize, StoreError>;
}

/// The audit trail.
#[tonic::async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Writes an audit event that goes with no change (a refused probe).
    async fn audit(&self, event: AuditEvent) -> Result<(), StoreError>;
    /// A page of the audit trail.
    async fn audit_events(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
}

/// Caller token rows (digests and MACs, never tokens).
#[tonic::async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Stores a new token row.
    async fn insert_token(&self, row: TokenRow) -> Result<(), StoreError>;
    /// Every token row, revoked ones included; a row that cannot be read is returned as such.
    async fn tokens(&self) -> Result<Vec<Result<TokenRow, UnreadableToken>>, StoreError>;
    /// Marks a token revoked and destroys its MAC, so that clearing `revoked_at` by hand cannot
    /// revive it (a new MAC needs the keyring). `NotFound` if there is no such id, `Revoked` if
    /// it already is.
    async fn revoke_token(&self, id: String, now: Millis) -> Result<(), StoreError>;
    /// Records when tokens were last used (coalesced by the caller).
    async fn record_token_use(&self, uses: Vec<(String, Millis)>) -> Result<(), StoreError>;
    /// Moves token rows to another data key in one transaction; returns how many were moved.
    async fn rekey_tokens(&self, batch: Vec<TokenRekey>) -> Result<usize, StoreError>;
}

/// Everything the server needs from one engine.
pub trait Store: KeyMaterialStore + CredentialStore + AuditStore + TokenStore {}

impl<T: KeyMaterialStore + CredentialStore + AuditStore + TokenStore> Store for T {}

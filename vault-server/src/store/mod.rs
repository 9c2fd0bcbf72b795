//! Persistence behind a small trait, so that another backend (PostgreSQL for several stateless
//! replicas) can follow. SQLite is the one backend today.

mod cached;
mod migrate;
mod sqlite;

pub use cached::{CachedStore, DEFAULT_CAPACITY};
pub use sqlite::SqliteStore;

use crate::crypto::{KdfParams, Salt, Sealed, WrappedKey};
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
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

/// A code as stored: the key that sealed it, and the sealed bytes.
#[derive(Debug, Clone)]
pub struct StoredCode {
    pub key_id: u32,
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

/// A fresh binding to insert after its probe was accepted.
#[derive(Debug)]
pub struct NewBinding<'a> {
    pub mailbox: &'a Mailbox,
    pub client: &'a ClientId,
    pub provider: &'a str,
    pub code: StoredCode,
    pub now: Millis,
    pub probe_outcome: ProbeOutcome,
}

/// A rotate: the row must still be active at `from_version`; it moves to `from_version + 1`.
#[derive(Debug)]
pub struct RotateChange<'a> {
    pub mailbox: &'a str,
    pub client: &'a str,
    pub from_version: u64,
    pub code: StoredCode,
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
    /// Only ids below this (the keyset position).
    pub before_id: Option<i64>,
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

/// Filters and keyset position for listing credentials, ordered by (mailbox, client).
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub mailbox: Option<String>,
    pub client: Option<String>,
    pub include_revoked: bool,
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// The operations the vault needs from storage. Implementations make each write one
/// transaction, including its audit event.
pub trait Store: Send + Sync + 'static {
    /// Salt, KDF parameters and wrapped keys; `NotInitialised` if there are none.
    fn unlock_material(&self) -> Result<UnlockMaterial, StoreError>;
    /// One binding; `NotFound` if the pair was never bound.
    fn get(&self, mailbox: &str, client: &str) -> Result<std::sync::Arc<CredentialRow>, StoreError>;
    /// Inserts a binding, or re-binds a revoked pair at version 1. `AlreadyExists` if active.
    fn bind(&self, new: NewBinding<'_>, audit: &AuditEvent) -> Result<CredentialRow, StoreError>;
    /// Inserts many new pairs in one transaction, with one audit event for the batch (bulk
    /// import and benchmarks; no probe). Fails, changing nothing, if any pair exists.
    fn import(&self, rows: &[NewBinding<'_>], audit: &AuditEvent) -> Result<(), StoreError>;
    /// Swaps in a new code (version + 1), overwriting the old ciphertext. `Conflict` if the
    /// version moved, `Revoked` if revoked.
    fn rotate(&self, change: RotateChange<'_>, audit: &AuditEvent) -> Result<CredentialRow, StoreError>;
    /// Destroys the ciphertext and keeps a tombstone. `Revoked` if already revoked.
    fn revoke(
        &self,
        mailbox: &str,
        client: &str,
        reason: &str,
        now: Millis,
        audit: &AuditEvent,
    ) -> Result<CredentialRow, StoreError>;
    /// Records a probe of the code at `version`; `Conflict` if the row moved on meanwhile.
    fn record_probe(
        &self,
        mailbox: &str,
        client: &str,
        version: u64,
        outcome: ProbeOutcome,
        now: Millis,
        audit: &AuditEvent,
    ) -> Result<CredentialRow, StoreError>;
    /// Writes an audit event that goes with no change (a refused probe).
    fn audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// A page of bindings.
    fn list(&self, query: &ListQuery) -> Result<Vec<CredentialRow>, StoreError>;
    /// A page of the quarterly review.
    fn list_unused(&self, query: &UnusedQuery) -> Result<Vec<CredentialRow>, StoreError>;
    /// Records aggregated Reveals: one audit event each, and the pairs' `last_used_at`, in one
    /// transaction.
    fn record_reveals(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// A page of the audit trail.
    fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Numbers of (active, revoked) bindings.
    fn count_by_state(&self) -> Result<(u64, u64), StoreError>;
    /// Stores a new token row.
    fn insert_token(&self, row: &TokenRow) -> Result<(), StoreError>;
    /// Every token row, revoked ones included; a row that cannot be read is returned as such.
    fn tokens(&self) -> Result<Vec<Result<TokenRow, UnreadableToken>>, StoreError>;
    /// Marks a token revoked and destroys its MAC, so that clearing `revoked_at` by hand cannot
    /// revive it (a new MAC needs the keyring). `NotFound` if there is no such id, `Revoked` if
    /// it already is.
    fn revoke_token(&self, id: &str, now: Millis) -> Result<(), StoreError>;
    /// Records when tokens were last used (coalesced by the caller).
    fn record_token_use(&self, uses: &[(String, Millis)]) -> Result<(), StoreError>;
}

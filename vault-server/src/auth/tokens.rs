//! The token table as the server sees it: minted with the keyring's MAC key, cached in memory
//! (reloaded every [`RELOAD_EVERY`], so `token revoke` on a running server takes effect within
//! a second), checked on every call without touching the disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use tonic::Status;

use super::token::{check, digest};
use super::{Caller, Role, Token};
use crate::crypto::{Key, KeyId, Keyring, hmac, verify_hmac};
use crate::store::{Millis, Store, StoreError, TokenRow};

/// How often the cache re-reads the token table.
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);
/// An unknown token id triggers an immediate re-read, so a token works as soon as it is minted.
/// At most this many such re-reads per second, so garbage ids cannot keep the disk busy.
const MISS_RELOADS_PER_SEC: u32 = 20;

/// When the table was last read, and the miss re-reads in the current one-second window.
#[derive(Debug, Default)]
struct ReloadState {
    last_started: Option<Instant>,
    window: Option<Instant>,
    misses_in_window: u32,
}

/// A verified token: its digest, its caller, and its last use (written out by `flush_uses`).
#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    caller: Arc<Caller>,
    last_used: AtomicI64,
    flushed: AtomicI64,
}

/// The verified, unrevoked tokens and their recent uses.
pub struct Tokens {
    store: Arc<dyn Store>,
    mac_keys: HashMap<KeyId, Key>,
    active_key: KeyId,
    table: RwLock<HashMap<String, Arc<Entry>>>,
    reloads: Mutex<ReloadState>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("active_key", &self.active_key).finish_non_exhaustive()
    }
}

fn mac_fields<'a>(
    id: &'a str,
    role: &'a str,
    digest: &'a [u8],
    key_id: &'a [u8; 4],
    created: &'a [u8; 8],
) -> [&'a [u8]; 5] {
    [id.as_bytes(), role.as_bytes(), digest, key_id, created]
}

impl Tokens {
    /// Derives the MAC keys from the unlocked keyring. Call [`Tokens::reload`] before use.
    pub fn new(store: Arc<dyn Store>, keyring: &Keyring) -> Result<Self, StoreError> {
        let mut mac_keys = HashMap::new();
        for id in keyring.key_ids() {
            mac_keys.insert(id, keyring.token_mac_key(id).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(Self {
            store,
            mac_keys,
            active_key: keyring.active_key_id(),
            table: RwLock::new(HashMap::new()),
            reloads: Mutex::new(ReloadState::default()),
        })
    }

    /// Creates and stores a token for `role`; the token itself exists only in the return value.
    pub fn mint(&self, role: &Role, now: Millis) -> Result<(Token, String), StoreError> {
        let token = Token::generate();
        let (id, role, digest) = (token.id(), role.to_string(), token.digest());
        let key = self.mac_keys.get(&self.active_key).ok_or_else(|| StoreError::Corrupt("no active key".into()))?;
        let mac = hmac(key, &mac_fields(&id, &role, &digest, &self.active_key.to_be_bytes(), &now.to_be_bytes()));
        let row = TokenRow {
            id: id.clone(),
            role,
            digest: digest.to_vec(),
            key_id: self.active_key,
            mac: mac.to_vec(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert_token(&row)?;
        Ok((token, id))
    }

    /// Whether a stored row carries a valid MAC (it was minted with the passphrase).
    fn authentic(&self, t: &TokenRow) -> bool {
        self.mac_keys.get(&t.key_id).is_some_and(|key| {
            let (key_id, created) = (t.key_id.to_be_bytes(), t.created_at.to_be_bytes());
            verify_hmac(key, &mac_fields(&t.id, &t.role, &t.digest, &key_id, &created), &t.mac)
        })
    }

    /// Re-reads the token table; rows without a valid MAC are refused (and logged).
    pub fn reload(&self) -> Result<(), StoreError> {
        let mut state = self.reloads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.reload_locked(&mut state)
    }

    fn reload_locked(&self, state: &mut ReloadState) -> Result<(), StoreError> {
        state.last_started = Some(Instant::now());
        let mut table = HashMap::new();
        for t in self.store.tokens()? {
            if t.revoked_at.is_some() {
                continue;
            }
            if !self.authentic(&t) {
                tracing::warn!(token_id = %t.id, "token row has no valid MAC (inserted by hand?); refusing it");
                continue;
            }
            let (Some(role), Ok(digest)) = (Role::parse(&t.role), <[u8; 32]>::try_from(t.digest.as_slice())) else {
                tracing::warn!(token_id = %t.id, "token row is malformed; refusing it");
                continue;
            };
            let stored = t.last_used_at.unwrap_or(0);
            let caller = Arc::new(Caller { token_id: t.id.clone(), role });
            let entry = Entry { digest, caller, last_used: AtomicI64::new(stored), flushed: AtomicI64::new(stored) };
            table.insert(t.id, Arc::new(entry));
        }
        tracing::trace!(active = table.len(), "token table loaded");
        let mut current = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Uses recorded since the last flush carry over to the fresh entries.
        for (id, old) in current.iter() {
            if let Some(new) = table.get(id) {
                new.last_used.fetch_max(old.last_used.load(Ordering::Relaxed), Ordering::Relaxed);
                new.flushed.fetch_max(old.flushed.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        *current = table;
        Ok(())
    }

    /// For an id not in the cache: re-read the table unless a read began after this request
    /// arrived (it would have seen any token minted before), within the rate cap. Concurrent
    /// misses wait for one another, so they share a read.
    fn reload_on_miss(&self, arrived: Instant) -> bool {
        let mut state = self.reloads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.last_started.is_some_and(|t| t >= arrived) {
            return true;
        }
        let now = Instant::now();
        if state.window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            state.window = Some(now);
            state.misses_in_window = 0;
        }
        if state.misses_in_window >= MISS_RELOADS_PER_SEC {
            return false;
        }
        state.misses_in_window += 1;
        match self.reload_locked(&mut state) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "token table re-read failed");
                false
            }
        }
    }

    fn lookup(&self, id: &str, digest: &[u8; 32], now: Millis) -> Option<Arc<Caller>> {
        let table = self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = table.get(id).filter(|e| bool::from(e.digest.ct_eq(digest)))?;
        entry.last_used.fetch_max(now, Ordering::Relaxed);
        Some(entry.caller.clone())
    }

    /// Checks an `authorization` header value; the token is never logged or echoed, nor copied.
    pub fn authenticate(&self, header: Option<&str>, now: Millis) -> Result<Arc<Caller>, Status> {
        let raw = header.ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = raw.strip_prefix("Bearer ").map(str::trim).unwrap_or_default();
        let hex = check(token)
            .ok_or_else(|| Status::unauthenticated("malformed authorization header; expected Bearer avt_..."))?;
        let mut id_buf = [0u8; 15];
        id_buf[..3].copy_from_slice(b"tk_");
        id_buf[3..].copy_from_slice(hex.as_bytes());
        let id = std::str::from_utf8(&id_buf).unwrap_or_default();
        let (digest, arrived) = (digest(token), Instant::now());
        let caller = self
            .lookup(id, &digest, now)
            .or_else(|| if self.reload_on_miss(arrived) { self.lookup(id, &digest, now) } else { None });
        let Some(caller) = caller else {
            tracing::debug!(token_id = %id, "unknown or revoked token");
            return Err(Status::unauthenticated("unknown or revoked token"));
        };
        tracing::trace!(token_id = %id, role = %caller.role, "caller authenticated");
        Ok(caller)
    }

    /// Writes the last-used times that changed since the previous flush.
    pub fn flush_uses(&self) -> Result<(), StoreError> {
        let changed: Vec<(Arc<Entry>, Millis)> = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter_map(|e| {
                let used = e.last_used.load(Ordering::Relaxed);
                (used > e.flushed.load(Ordering::Relaxed)).then(|| (e.clone(), used))
            })
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let uses: Vec<(String, Millis)> = changed.iter().map(|(e, used)| (e.caller.token_id.clone(), *used)).collect();
        self.store.record_token_use(&uses)?;
        for (e, used) in changed {
            e.flushed.fetch_max(used, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KdfParams, Salt};
    use crate::store::{SqliteStore, UnlockMaterial};

    fn setup() -> (tempfile::TempDir, Arc<SqliteStore>, Tokens) {
        let tmp = tempfile::tempdir().unwrap();
        let kek = Key::random();
        let (ring, wrapped) = Keyring::generate(&kek);
        let material = UnlockMaterial { salt: Salt([0; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
        let store = Arc::new(SqliteStore::create(&tmp.path().join("v.db"), &material, 0).unwrap());
        let tokens = Tokens::new(store.clone(), &ring).unwrap();
        (tmp, store, tokens)
    }

    #[test]
    fn minted_tokens_authenticate_until_revoked() {
        let (_tmp, store, tokens) = setup();
        let (token, id) = tokens.mint(&Role::Admin, 1).unwrap();
        tokens.reload().unwrap();
        let header = format!("Bearer {}", token.expose());
        let caller = tokens.authenticate(Some(&header), 5).unwrap();
        assert_eq!((caller.token_id.as_str(), &caller.role), (id.as_str(), &Role::Admin));
        tokens.flush_uses().unwrap();
        assert_eq!(store.tokens().unwrap()[0].last_used_at, Some(5));
        store.revoke_token(&id, 9).unwrap();
        tokens.reload().unwrap();
        assert_eq!(tokens.authenticate(Some(&header), 10).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn wrong_missing_and_forged_tokens_are_refused() {
        let (_tmp, store, tokens) = setup();
        let (token, _) = tokens.mint(&Role::Client(crate::ids::ClientId::parse("sender").unwrap()), 1).unwrap();
        // A row inserted by hand, with a digest of a token the attacker knows but no valid MAC.
        let forged = Token::generate();
        let row = TokenRow {
            id: forged.id(),
            role: "admin".into(),
            digest: forged.digest().to_vec(),
            key_id: 1,
            mac: vec![0; 32],
            created_at: 1,
            last_used_at: None,
            revoked_at: None,
        };
        store.insert_token(&row).unwrap();
        tokens.reload().unwrap();
        let code = |h: Option<&str>| tokens.authenticate(h, 2).unwrap_err().code();
        assert_eq!(code(None), tonic::Code::Unauthenticated);
        assert_eq!(code(Some("Bearer nope")), tonic::Code::Unauthenticated);
        assert_eq!(code(Some(&format!("Bearer {}", forged.expose()))), tonic::Code::Unauthenticated);
        // Same id, other secret.
        let mut other = token.expose().to_owned();
        let last = if other.ends_with('A') { 'B' } else { 'A' };
        other.pop();
        other.push(last);
        assert_eq!(code(Some(&format!("Bearer {other}"))), tonic::Code::Unauthenticated);
        let msg = tokens.authenticate(Some(&format!("Bearer {}", forged.expose())), 2).unwrap_err();
        assert!(!msg.message().contains(&forged.expose()[4..]));
    }
}

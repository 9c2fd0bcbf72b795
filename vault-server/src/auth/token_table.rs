//! The token table as the server sees it: minted with the keyring's MAC key, cached in memory
//! (reloaded every [`RELOAD_EVERY`], so `token revoke` on a running server takes effect within
//! a second), checked on every call without touching the disk.
//!
//! Fail-closed: a row that cannot be read or has no valid MAC is skipped and reported, never
//! blocking the others; if the table has not been read successfully for [`VOUCH_FOR`], every
//! token is refused (`TokensUnavailable`) rather than served from a stale table.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::bearer::{digest, from_header};
use super::throttle::FailureThrottle;
use super::{AuthError, Caller, Role, Token};
use crate::crypto::{Keyring, LiveKeyring, hmac, verify_hmac};
use crate::store::{Millis, StoreError, TokenRekey, TokenRow, TokenStore};

/// How often the cache re-reads the token table.
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);
/// How long a successful read of the table vouches for it. Past that (the store cannot be
/// read), tokens are refused, so a revocation is never outlived by more than this.
pub const VOUCH_FOR: Duration = Duration::from_secs(1);
/// An unknown token id triggers an immediate re-read, so a token works as soon as it is minted.
/// At most this many such re-reads per second, so garbage ids cannot keep the disk busy.
const MISS_RELOADS_PER_SEC: u32 = 20;

/// When the table was last read, and the miss re-reads in the current one-second window.
#[derive(Debug, Default)]
struct ReloadState {
    last_started: Option<Instant>,
    window: Option<Instant>,
    misses_in_window: u32,
    /// Rows already reported as unusable (id and why), so each is logged once.
    reported: HashSet<String>,
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
    store: Arc<dyn TokenStore>,
    /// The MAC keys derive from it; a data-key rotation swaps it.
    keys: Arc<LiveKeyring>,
    table: RwLock<HashMap<String, Arc<Entry>>>,
    /// Millis until which the table is vouched for (the start of the last good read + VOUCH_FOR).
    vouched_until: AtomicI64,
    /// Serialises re-reads (held across the store's read).
    reloads: tokio::sync::Mutex<ReloadState>,
    throttle: FailureThrottle,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("active_key", &self.keys.load().active_key_id()).finish_non_exhaustive()
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

/// Whether a stored row carries a valid MAC (it was minted with the passphrase and never
/// revoked: revoking destroys the MAC).
pub fn authentic(ring: &Keyring, t: &TokenRow) -> bool {
    ring.token_mac_key(t.key_id).is_ok_and(|key| {
        let (key_id, created) = (t.key_id.to_be_bytes(), t.created_at.to_be_bytes());
        verify_hmac(&key, &mac_fields(&t.id, &t.role, &t.digest, &key_id, &created), &t.mac)
    })
}

/// A valid, unrevoked token row under an older key, moved to `ring`'s active key with a new MAC;
/// `None` for a row already there or one with no valid MAC (it stays refused).
pub fn rekey(ring: &Keyring, t: &TokenRow) -> Option<TokenRekey> {
    let active = ring.active_key_id();
    if t.key_id == active || t.revoked_at.is_some() || !authentic(ring, t) {
        return None;
    }
    let key = ring.token_mac_key(active).ok()?;
    let mac = hmac(&key, &mac_fields(&t.id, &t.role, &t.digest, &active.to_be_bytes(), &t.created_at.to_be_bytes()));
    Some(TokenRekey {
        id: t.id.clone(),
        old_key_id: t.key_id,
        old_mac: t.mac.clone(),
        key_id: active,
        mac: mac.to_vec(),
    })
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Tokens {
    /// Token rows are MAC'd under keys derived from `keys`. Call [`Tokens::reload`] before use.
    pub fn new(store: Arc<dyn TokenStore>, keys: Arc<LiveKeyring>) -> Self {
        Self {
            store,
            keys,
            table: RwLock::new(HashMap::new()),
            vouched_until: AtomicI64::new(Millis::MIN),
            reloads: tokio::sync::Mutex::new(ReloadState::default()),
            throttle: FailureThrottle::default(),
        }
    }

    /// Creates and stores a token for `role`; the token itself exists only in the return value.
    pub async fn mint(&self, role: &Role, now: Millis) -> Result<(Token, String), StoreError> {
        let token = Token::generate();
        let (id, role, digest) = (token.id(), role.to_string(), token.digest());
        let ring = self.keys.current();
        let active = ring.active_key_id();
        let key = ring.token_mac_key(active).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mac = hmac(&key, &mac_fields(&id, &role, &digest, &active.to_be_bytes(), &now.to_be_bytes()));
        let row = TokenRow {
            id: id.clone(),
            role,
            digest: digest.to_vec(),
            key_id: active,
            mac: mac.to_vec(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert_token(row).await?;
        Ok((token, id))
    }

    /// Re-reads the token table at `now`. Unusable rows are skipped and reported once each; an
    /// error means the store could not be read at all (the old table stays, vouched for until
    /// its time runs out).
    pub async fn reload(&self, now: Millis) -> Result<(), StoreError> {
        let mut state = self.reloads.lock().await;
        self.reload_locked(&mut state, now).await
    }

    async fn reload_locked(&self, state: &mut ReloadState, now: Millis) -> Result<(), StoreError> {
        state.last_started = Some(Instant::now());
        let mut table = HashMap::new();
        let mut report = |id: &str, why: &str| {
            if state.reported.insert(format!("{id}\n{why}")) {
                tracing::warn!(token_id = %id.escape_debug(), "token row refused: {why}; the other tokens are unaffected");
            }
        };
        // The keyring is taken before the rows: a rotation re-keys rows before it retires a key,
        // so only a row newer than this snapshot can name a key it lacks (then take a newer one).
        let mut ring = self.keys.current();
        for read in self.store.tokens().await? {
            let t = match read {
                Ok(t) => t,
                Err(bad) => {
                    report(&bad.id, &bad.reason);
                    continue;
                }
            };
            if t.revoked_at.is_some() {
                continue;
            }
            if !ring.has_key(t.key_id) {
                ring = self.keys.current();
            }
            if !authentic(&ring, &t) {
                report(&t.id, "no valid MAC (inserted or edited by hand, or revoked)");
                continue;
            }
            let (Some(role), Ok(digest)) = (Role::parse(&t.role), <[u8; 32]>::try_from(t.digest.as_slice())) else {
                report(&t.id, "malformed role or digest");
                continue;
            };
            let stored = t.last_used_at.unwrap_or(0);
            let caller = Arc::new(Caller { token_id: t.id.clone(), role });
            let entry = Entry { digest, caller, last_used: AtomicI64::new(stored), flushed: AtomicI64::new(stored) };
            table.insert(t.id, Arc::new(entry));
        }
        drop(ring);
        tracing::trace!(active = table.len(), "token table loaded");
        let mut gone = Vec::new();
        {
            let mut current = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Uses recorded since the last flush carry over to the fresh entries; those of tokens
            // revoked meanwhile are written now, so the last use before a revocation is kept.
            for (id, old) in current.iter() {
                let used = old.last_used.load(Ordering::Relaxed);
                match table.get(id) {
                    Some(new) => {
                        new.last_used.fetch_max(used, Ordering::Relaxed);
                        new.flushed.fetch_max(old.flushed.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    None if used > old.flushed.load(Ordering::Relaxed) => gone.push((id.clone(), used)),
                    None => {}
                }
            }
            *current = table;
        }
        self.vouched_until.fetch_max(now.saturating_add(millis(VOUCH_FOR)), Ordering::Release);
        if !gone.is_empty()
            && let Err(e) = self.store.record_token_use(gone).await
        {
            tracing::warn!(error = %e, "could not record the last uses of revoked tokens");
        }
        Ok(())
    }

    /// For an id not in the cache: re-read the table unless a read began after this request
    /// arrived (it would have seen any token minted before), within the rate cap. Concurrent
    /// misses wait for one another, so they share a read.
    async fn reload_on_miss(&self, arrived: Instant, now: Millis) -> bool {
        let mut state = self.reloads.lock().await;
        if state.last_started.is_some_and(|t| t >= arrived) {
            return true;
        }
        let started = Instant::now();
        if state.window.is_none_or(|w| started.duration_since(w) >= Duration::from_secs(1)) {
            state.window = Some(started);
            state.misses_in_window = 0;
        }
        if state.misses_in_window >= MISS_RELOADS_PER_SEC {
            return false;
        }
        state.misses_in_window += 1;
        match self.reload_locked(&mut state, now).await {
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
        // A read first: callers on every core share this entry, and a write per call would
        // bounce its cache line between them.
        if entry.last_used.load(Ordering::Relaxed) < now {
            entry.last_used.fetch_max(now, Ordering::Relaxed);
        }
        Some(entry.caller.clone())
    }

    /// Spends one failure from `peer`'s bucket: `error` itself, or `Throttled` once the peer has
    /// failed too often.
    fn failed(&self, peer: Option<IpAddr>, error: AuthError) -> AuthError {
        match peer.map(|ip| self.throttle.fail(ip, Instant::now())) {
            Some(Err(retry_after)) => AuthError::Throttled { retry_after },
            _ => error,
        }
    }

    /// Checks an `authorization` header value from `peer`; the token is never logged or echoed,
    /// nor copied.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        peer: Option<IpAddr>,
        now: Millis,
    ) -> Result<Arc<Caller>, AuthError> {
        if now > self.vouched_until.load(Ordering::Acquire) {
            return Err(AuthError::TokensUnavailable);
        }
        let Some(raw) = header else { return Err(self.failed(peer, AuthError::MissingToken)) };
        let Some((token, row_id)) = from_header(raw) else { return Err(self.failed(peer, AuthError::MalformedToken)) };
        let id = row_id.as_str();
        let (digest, arrived) = (digest(token), Instant::now());
        if let Some(caller) = self.lookup(id, &digest, now) {
            tracing::trace!(token_id = %id, role = %caller.role, "caller authenticated");
            return Ok(caller);
        }
        // Counted as a failure before the wait for a re-read (a call cancelled meanwhile is
        // counted all the same), and given back if a token minted since the last re-read is
        // found. A throttled peer starts no re-read, but waits for one under way (many calls
        // at once with a new token: the first ones' re-read finds it for all).
        let error = self.failed(peer, AuthError::InvalidToken);
        let reread = if error == AuthError::InvalidToken {
            self.reload_on_miss(arrived, now).await
        } else {
            drop(self.reloads.lock().await);
            true
        };
        if reread && let Some(caller) = self.lookup(id, &digest, now) {
            if let (Some(ip), AuthError::InvalidToken) = (peer, &error) {
                self.throttle.refund(ip, Instant::now());
            }
            return Ok(caller);
        }
        tracing::debug!(token_id = %id, reason = error.reason(), "token refused");
        Err(error)
    }

    /// Writes the last-used times that changed since the previous flush.
    pub async fn flush_uses(&self) -> Result<(), StoreError> {
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
        self.store.record_token_use(uses).await?;
        for (e, used) in changed {
            e.flushed.fetch_max(used, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KdfParams, Key, Salt};
    use crate::store::{KeyMaterialStore as _, SqliteStore, UnlockMaterial};

    fn setup() -> (tempfile::TempDir, Arc<SqliteStore>, Tokens) {
        let tmp = tempfile::tempdir().unwrap();
        let kek = Key::random();
        let (ring, wrapped) = Keyring::generate(&kek);
        let material = UnlockMaterial { salt: Salt([0; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
        let store = Arc::new(SqliteStore::create(&tmp.path().join("v.db"), &material, 0).unwrap());
        let tokens = Tokens::new(store.clone(), Arc::new(LiveKeyring::new(ring)));
        (tmp, store, tokens)
    }

    fn bearer(t: &Token) -> String {
        format!("Bearer {}", t.expose())
    }

    #[tokio::test]
    async fn a_use_just_before_a_revocation_is_kept() {
        let (_tmp, store, tokens) = setup();
        let (token, id) = tokens.mint(&Role::Admin, 1_000).await.unwrap();
        tokens.reload(1_000).await.unwrap();
        tokens.authenticate(Some(&bearer(&token)), None, 2_000).await.unwrap();
        // Revoked by `token revoke` (another process) before the server flushed the use.
        store.revoke_token(id.clone(), 2_500).await.unwrap();
        tokens.reload(3_000).await.unwrap();
        let rows = store.tokens().await.unwrap();
        let row = rows.iter().flatten().find(|t| t.id == id).unwrap();
        assert_eq!((row.last_used_at, row.revoked_at), (Some(2_000), Some(2_500)));
    }

    #[tokio::test]
    async fn minted_tokens_authenticate_until_revoked() {
        let (_tmp, store, tokens) = setup();
        let (token, id) = tokens.mint(&Role::Admin, 1).await.unwrap();
        tokens.reload(1).await.unwrap();
        let caller = tokens.authenticate(Some(&bearer(&token)), None, 5).await.unwrap();
        assert_eq!((caller.token_id.as_str(), &caller.role), (id.as_str(), &Role::Admin));
        tokens.flush_uses().await.unwrap();
        assert_eq!(store.tokens().await.unwrap()[0].as_ref().unwrap().last_used_at, Some(5));
        store.revoke_token(id.clone(), 9).await.unwrap();
        tokens.reload(10).await.unwrap();
        assert_eq!(tokens.authenticate(Some(&bearer(&token)), None, 10).await.unwrap_err(), AuthError::InvalidToken);
    }

    #[tokio::test]
    async fn wrong_missing_and_forged_tokens_are_refused() {
        let (_tmp, store, tokens) = setup();
        let (token, _) = tokens.mint(&Role::Client(crate::ids::ClientId::parse("sender").unwrap()), 1).await.unwrap();
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
        store.insert_token(row).await.unwrap();
        tokens.reload(2).await.unwrap();
        let err = async |h: Option<&str>| tokens.authenticate(h, None, 2).await.unwrap_err();
        assert_eq!(err(None).await, AuthError::MissingToken);
        assert_eq!(err(Some("Bearer nope")).await, AuthError::MalformedToken);
        assert_eq!(err(Some(&bearer(&forged))).await, AuthError::InvalidToken);
        // Same id, other secret: the same answer as an unknown id.
        let mut other = token.expose().to_owned();
        let last = if other.ends_with('A') { 'B' } else { 'A' };
        other.pop();
        other.push(last);
        assert_eq!(err(Some(&format!("Bearer {other}"))).await, AuthError::InvalidToken);
    }

    #[tokio::test]
    async fn a_table_that_cannot_be_reread_stops_vouching_for_tokens() {
        let (_tmp, _store, tokens) = setup();
        let (token, _) = tokens.mint(&Role::Admin, 1).await.unwrap();
        tokens.reload(1_000).await.unwrap();
        assert!(tokens.authenticate(Some(&bearer(&token)), None, 1_900).await.is_ok());
        let late = 1_000 + millis(VOUCH_FOR) + 1;
        assert_eq!(
            tokens.authenticate(Some(&bearer(&token)), None, late).await.unwrap_err(),
            AuthError::TokensUnavailable
        );
        tokens.reload(late).await.unwrap();
        assert!(tokens.authenticate(Some(&bearer(&token)), None, late).await.is_ok());
    }

    #[tokio::test]
    async fn a_peer_that_keeps_failing_is_throttled_but_valid_tokens_pass() {
        let (_tmp, _store, tokens) = setup();
        let (token, _) = tokens.mint(&Role::Admin, 1).await.unwrap();
        tokens.reload(1).await.unwrap();
        let peer = Some(IpAddr::from([127, 0, 0, 9]));
        let garbage = Token::generate();
        let mut answers = Vec::new();
        for _ in 0..40 {
            answers.push(tokens.authenticate(Some(&bearer(&garbage)), peer, 2).await.unwrap_err());
        }
        assert!(answers[..20].iter().all(|e| *e == AuthError::InvalidToken), "{answers:?}");
        assert!(answers[20..].iter().all(|e| matches!(e, AuthError::Throttled { .. })), "{answers:?}");
        assert!(matches!(tokens.authenticate(None, peer, 2).await, Err(AuthError::Throttled { .. })));
        assert!(tokens.authenticate(Some(&bearer(&token)), peer, 2).await.is_ok(), "a valid token is never throttled");
        let other = Some(IpAddr::from([127, 0, 0, 10]));
        assert_eq!(tokens.authenticate(Some(&bearer(&garbage)), other, 2).await.unwrap_err(), AuthError::InvalidToken);
    }

    #[tokio::test]
    async fn many_calls_at_once_with_a_token_minted_since_the_last_reread_all_pass() {
        let (_tmp, _store, tokens) = setup();
        tokens.reload(1).await.unwrap();
        let tokens = Arc::new(tokens);
        let (new, _) = tokens.mint(&Role::Admin, 2).await.unwrap();
        // 30 workers behind one address start at once: past the first 20, the address is out of
        // failures before the first re-read ends; they wait for it instead of being refused.
        let peer = Some(IpAddr::from([127, 0, 0, 12]));
        // A re-read under way while they arrive (held here until all have reached it).
        let mut reread = tokens.reloads.lock().await;
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let (tokens, header) = (tokens.clone(), bearer(&new));
            calls.spawn(async move { tokens.authenticate(Some(&header), peer, 2).await.map(|_| ()) });
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        tokens.reload_locked(&mut reread, 2).await.unwrap();
        drop(reread);
        let answers: Vec<_> = calls.join_all().await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    }

    #[tokio::test]
    async fn a_token_minted_since_the_last_reread_spends_no_failure() {
        let (_tmp, _store, tokens) = setup();
        tokens.reload(1).await.unwrap();
        let garbage = Token::generate();
        // Minted elsewhere (`token create`) after the last re-read: found by a re-read, and its
        // first call spends no failure (the peer with one failure left keeps it).
        let near = Some(IpAddr::from([127, 0, 0, 11]));
        for _ in 0..19 {
            tokens.authenticate(Some(&bearer(&garbage)), near, 2).await.unwrap_err();
        }
        let (new, _) = tokens.mint(&Role::Admin, 3).await.unwrap();
        assert!(tokens.authenticate(Some(&bearer(&new)), near, 3).await.is_ok());
        assert_eq!(tokens.authenticate(Some(&bearer(&garbage)), near, 3).await.unwrap_err(), AuthError::InvalidToken);
        // From a throttled peer, it waits for the next periodic re-read (every 250 ms).
        let peer = Some(IpAddr::from([127, 0, 0, 9]));
        for _ in 0..21 {
            tokens.authenticate(Some(&bearer(&garbage)), peer, 4).await.unwrap_err();
        }
        let (newer, _) = tokens.mint(&Role::Admin, 4).await.unwrap();
        assert!(matches!(tokens.authenticate(Some(&bearer(&newer)), peer, 4).await, Err(AuthError::Throttled { .. })));
        tokens.reload(5).await.unwrap();
        assert!(tokens.authenticate(Some(&bearer(&newer)), peer, 5).await.is_ok());
    }

    #[tokio::test]
    async fn a_rekeyed_token_keeps_working_after_its_old_key_is_retired() {
        let tmp = tempfile::tempdir().unwrap();
        let kek = Key::random();
        let (ring, wrapped) = Keyring::generate(&kek);
        let material = UnlockMaterial { salt: Salt([0; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
        let store = Arc::new(SqliteStore::create(&tmp.path().join("v.db"), &material, 0).unwrap());
        let keys = Arc::new(LiveKeyring::new(ring));
        let tokens = Tokens::new(store.clone(), keys.clone());
        let (token, _) = tokens.mint(&Role::Admin, 1).await.unwrap();
        let (revoked, revoked_id) = tokens.mint(&Role::Admin, 1).await.unwrap();
        store.revoke_token(revoked_id, 2).await.unwrap();

        let (next, wrapped) = keys.current().with_new_key(&kek);
        store.add_data_key(material.salt, wrapped, 3).await.unwrap();
        keys.replace(next);
        let ring = keys.current();
        let rekeys: Vec<_> =
            store.tokens().await.unwrap().into_iter().filter_map(|t| rekey(&ring, &t.unwrap())).collect();
        assert_eq!(rekeys.len(), 1, "only the valid, unrevoked row is re-MAC'd");
        assert_eq!(store.rekey_tokens(rekeys).await.unwrap(), 1);
        assert_eq!(store.retire_data_keys(2, vec![]).await.unwrap().retired, [1]);
        keys.replace(ring.without_retired());

        tokens.reload(4).await.unwrap();
        assert!(tokens.authenticate(Some(&bearer(&token)), None, 4).await.is_ok());
        assert_eq!(tokens.authenticate(Some(&bearer(&revoked)), None, 4).await.unwrap_err(), AuthError::InvalidToken);
    }
}

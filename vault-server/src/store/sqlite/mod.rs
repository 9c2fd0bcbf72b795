//! The SQLite store: one writer connection (IMMEDIATE transactions) and a small pool of readers.
//! WAL with `synchronous=FULL`, so an acknowledged write survives power loss. [`Db`] is the
//! synchronous engine (for the CLI and tools, outside the async runtime); [`SqliteStore`] serves
//! the async store traits by running each call on the blocking pool, so no caller ever blocks
//! an async worker on SQLite.

mod error;
mod keys;
mod maintenance;
pub(super) mod migrate;
mod planted;
mod requests;
mod rows;
mod store;
mod token_rows;

pub use planted::{ReadBack, TABLES as PLANTABLE_TABLES, plant_and_read};
pub use store::SqliteStore;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{
    AuditEvent, AuditQuery, AuditRecord, CredentialRow, CredentialState, DuePosition, ListQuery, Millis, NewBinding,
    ProbeRecord, RequestRecord, RevokeChange, RotateChange, StoreError, TokenRow, UnlockMaterial, UnreadableToken,
    UnusedQuery,
};
use crate::crypto::{KdfParams, Salt, Sealed, WrappedKey};
use crate::outcome::ProbeOutcome;
use rows::{get_row, insert_audit};

/// Reader connections at most. More readers would not help on a small machine, and each holds
/// its own page cache; further readers wait for one to come back.
const MAX_READERS: usize = 4;

/// Slots of [`Db::get_here`] readers: more than a runtime's worker threads here, so each
/// worker keeps one of its own.
const HERE_SLOTS: usize = 8;

/// This thread's slot among [`HERE_SLOTS`], fixed on first use.
fn here_slot() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % HERE_SLOTS;
    }
    SLOT.with(|s| *s)
}

/// Idle reader connections, and how many exist in all.
#[derive(Default)]
struct Readers {
    idle: Vec<Connection>,
    open: usize,
}

/// The synchronous SQLite engine.
pub struct Db {
    path: std::path::PathBuf,
    /// (device, inode) of the file opened: writes check the path still names it.
    identity: (u64, u64),
    writer: Mutex<Connection>,
    readers: Mutex<Readers>,
    returned: Condvar,
    /// A reader of its own for the token table: its re-read must never queue behind a flood of
    /// Reveal cache misses holding the pool, or every token would be refused (fail-closed).
    tokens_reader: Mutex<Option<Connection>>,
    /// Readers for point reads on the calling thread ([`Db::get_here`]), one slot per thread
    /// (by [`here_slot`]), opened on first use.
    here: [Mutex<Option<Connection>>; HERE_SLOTS],
    /// A WAL truncation is owed: the last one failed, or the WAL was not empty at open (a crash
    /// between a destroying commit and its truncation).
    shred_owed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish_non_exhaustive()
    }
}

/// How long a connection waits for a lock (a writer for the writer's lock, a checkpoint for
/// readers).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Freed pages are zeroed, so a revoked or rotated ciphertext does not linger in the file.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    configure(&conn)?;
    // The schema has no triggers or views. One planted while the server runs (the start-up
    // check catches the others) would run inside every write it matches, copying a code
    // aside before its destruction, say: every connection refuses to prepare any such work.
    conn.authorizer(Some(|ctx: rusqlite::hooks::AuthContext<'_>| {
        if ctx.accessor.is_some() {
            rusqlite::hooks::Authorization::Deny
        } else {
            rusqlite::hooks::Authorization::Allow
        }
    }));
    Ok(conn)
}

/// `path` for a SQLite `file:` URI: every byte but letters, digits, `/`, `.`, `-` and `_`
/// percent-encoded.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    path.as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-done SQLite transaction behind (it rolls
    // back on drop), so the connection is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Db {
    /// Creates a new database file (mode 0600) holding the unlock material. Fails if it exists.
    pub fn create(path: &Path, material: &UnlockMaterial, now: i64) -> Result<Self, StoreError> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Corrupt(format!("cannot create {}: {e}", path.display())))?;
        let mut conn = open_conn(path)?;
        migrate::apply(&mut conn)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO vault_meta (id, kdf_salt, kdf_m_kib, kdf_t, kdf_p, created_at) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![&material.salt.0[..], material.params.m_kib, material.params.t, material.params.p, now],
        )?;
        for k in &material.keys {
            tx.execute(
                "INSERT INTO keyring (key_id, nonce, wrapped_dek, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![k.key_id, &k.sealed.nonce[..], &k.sealed.ciphertext, now],
            )?;
        }
        tx.commit()?;
        Self::with_writer(path, conn)
    }

    /// Whether the file at `path` holds nothing: a regular file of 0 bytes with no WAL beside it
    /// (an `init` cut off at its start, a file made by hand), or SQLite that is exactly the
    /// vault's schema at its version with every table empty (an `init` cut off later). Such a
    /// file has no keyring, so nothing in it could ever be read. A link, another schema, a
    /// foreign table or a single row is not nothing. Reads only.
    pub fn holds_nothing(path: &Path) -> Result<bool, StoreError> {
        let stat = |p: &Path| std::fs::symlink_metadata(p);
        let meta = stat(path).map_err(|e| StoreError::Unavailable(format!("cannot stat {}: {e}", path.display())))?;
        if !meta.file_type().is_file() {
            return Ok(false);
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = stat(Path::new(&wal)).ok();
        if meta.len() == 0 {
            return Ok(wal.is_none_or(|w| w.len() == 0));
        }
        // Without a WAL file the main file holds everything, and `immutable` reads it without
        // creating the WAL and shared-memory files a plain read-only open leaves behind.
        let query = if wal.is_some() { "mode=ro" } else { "immutable=1" };
        let uri = format!("file:{}?{query}", uri_path(path));
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(uri, flags)?;
        // A vault's own file (a vault_meta row) answers at once, without building the
        // migrations' reference schemas on every start.
        let has_meta: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'vault_meta'",
            [],
            |r| r.get(0),
        )?;
        if has_meta && conn.query_row("SELECT EXISTS (SELECT 1 FROM vault_meta)", [], |r| r.get::<_, bool>(0))? {
            return Ok(false);
        }
        migrate::untouched(&conn)
    }

    /// Opens an existing database and applies pending migrations. A file that holds nothing
    /// ([`Db::holds_nothing`]) is not initialised, and is left as it is.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() || Self::holds_nothing(path)? {
            return Err(StoreError::NotInitialised);
        }
        let mut conn = open_conn(path)?;
        migrate::apply(&mut conn)?;
        Self::with_writer(path, conn)
    }

    fn with_writer(path: &Path, writer: Connection) -> Result<Self, StoreError> {
        let identity =
            file_identity(path).map_err(|e| StoreError::Unavailable(format!("cannot stat {}: {e}", path.display())))?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal_left = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
        Ok(Self {
            path: path.to_owned(),
            identity,
            writer: Mutex::new(writer),
            readers: Mutex::new(Readers::default()),
            returned: Condvar::new(),
            tokens_reader: Mutex::new(None),
            here: std::array::from_fn(|_| Mutex::new(None)),
            shred_owed: std::sync::atomic::AtomicBool::new(wal_left),
        })
    }

    /// The writer connection, once the path is checked to still name the file opened: writes to
    /// a database deleted or replaced under the running server would be lost at the next start.
    fn writer(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        match file_identity(&self.path) {
            Ok(id) if id == self.identity => Ok(lock(&self.writer)),
            _ => Err(StoreError::Unavailable(format!(
                "{} was deleted or replaced under the running server; writes are refused (restore it and restart)",
                self.path.display()
            ))),
        }
    }

    /// An idle reader, a new one while fewer than [`MAX_READERS`] exist, or the next one
    /// returned.
    fn acquire_reader(&self) -> Result<Connection, StoreError> {
        let mut readers = lock(&self.readers);
        loop {
            if let Some(c) = readers.idle.pop() {
                return Ok(c);
            }
            if readers.open < MAX_READERS {
                readers.open += 1;
                drop(readers);
                return open_conn(&self.path).inspect_err(|_| lock(&self.readers).open -= 1);
            }
            readers = self.returned.wait(readers).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Runs `f` on a reader connection, then gives the connection back.
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.acquire_reader()?;
        let out = f(&conn);
        lock(&self.readers).idle.push(conn);
        self.returned.notify_one();
        out
    }

    /// Runs `f` on the token table's own reader, opened on first use.
    fn with_tokens_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut slot = lock(&self.tokens_reader);
        let conn = match slot.take() {
            Some(conn) => conn,
            None => open_conn(&self.path)?,
        };
        let out = f(&conn);
        *slot = Some(conn);
        out
    }

    /// One IMMEDIATE transaction on an existing row: `change` sees the row as it is now, writes,
    /// and the row is read back before commit, when `request` (if any) is remembered with it.
    fn write(
        &self,
        mailbox: &str,
        client: &str,
        request: Option<RequestRecord>,
        change: impl FnOnce(&rusqlite::Transaction<'_>, &CredentialRow) -> Result<(), StoreError>,
    ) -> Result<CredentialRow, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = get_row(&tx, mailbox, client)?.ok_or(StoreError::NotFound)?;
        change(&tx, &row)?;
        let row = get_row(&tx, mailbox, client)?.ok_or(StoreError::NotFound)?;
        requests::insert(&tx, request, &row)?;
        tx.commit()?;
        Ok(row)
    }

    /// Checkpoints the WAL into the main file; used at shutdown.
    /// Copies the WAL into the database and truncates it to zero bytes; `false` if readers kept
    /// it from completing (the WAL then still holds old pages).
    pub fn checkpoint(&self) -> Result<bool, StoreError> {
        let busy: i64 = lock(&self.writer).query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }
}

fn blob_array<const N: usize>(v: Vec<u8>, what: &str) -> Result<[u8; N], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt(format!("{what} has the wrong length")))
}

fn read_unlock_material(conn: &Connection) -> Result<UnlockMaterial, StoreError> {
    let meta = conn
        .query_row("SELECT kdf_salt, kdf_m_kib, kdf_t, kdf_p FROM vault_meta WHERE id = 1", [], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?
        .ok_or(StoreError::NotInitialised)?;
    let mut keys = Vec::new();
    let mut stmt = conn.prepare("SELECT key_id, nonce, wrapped_dek FROM keyring ORDER BY key_id")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let nonce = blob_array(r.get::<_, Vec<u8>>(1)?, "a keyring nonce")?;
        keys.push(WrappedKey { key_id: r.get(0)?, sealed: Sealed { nonce, ciphertext: r.get(2)? } });
    }
    Ok(UnlockMaterial {
        salt: Salt(blob_array(meta.0, "the KDF salt")?),
        params: KdfParams { m_kib: meta.1, t: meta.2, p: meta.3 },
        keys,
    })
}

fn insert_binding(tx: &rusqlite::Transaction<'_>, new: &NewBinding) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO credentials (mailbox, client, provider, state, version, key_id, nonce, ciphertext, \
         created_at, last_verified_at, last_probe_outcome, generation) VALUES (?1, ?2, ?3, 1, 1, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
    )?
    .execute(params![
        new.mailbox.as_str(),
        new.client.as_str(),
        new.provider,
        new.code.key_id,
        &new.code.sealed.nonce[..],
        &new.code.sealed.ciphertext,
        new.now,
        new.probe_outcome as i32,
        new.code.generation.as_ref().map(|g| &g[..])
    ])?;
    Ok(())
}

/// The engine's operations, each one synchronous call (writes: one IMMEDIATE transaction).
impl Db {
    pub fn unlock_material(&self) -> Result<UnlockMaterial, StoreError> {
        self.with_reader(read_unlock_material)
    }

    pub fn get(&self, mailbox: &str, client: &str) -> Result<std::sync::Arc<CredentialRow>, StoreError> {
        self.with_reader(|conn| get_row(conn, mailbox, client)?.map(std::sync::Arc::new).ok_or(StoreError::NotFound))
    }

    /// [`Db::get`] on the calling thread, on this thread's own reader, never waiting: `None`
    /// when that reader is in use or the read fails (SQLite busy, say), and the caller reads
    /// through the pool instead. A point read is a few microseconds from the OS page cache, less
    /// than a hop to the blocking pool costs, so an async worker may call this.
    pub fn get_here(&self, mailbox: &str, client: &str) -> Option<Result<std::sync::Arc<CredentialRow>, StoreError>> {
        let mut slot = self.here[here_slot()].try_lock().ok()?;
        if slot.is_none() {
            let conn = open_conn(&self.path).ok()?;
            // Busy means wait; here it means go to the pool.
            conn.busy_timeout(std::time::Duration::ZERO).ok()?;
            *slot = Some(conn);
        }
        // Any error (busy included) is left to the pool's read, which waits and reports it.
        let row = get_row(slot.as_ref()?, mailbox, client).ok()?;
        Some(row.map(std::sync::Arc::new).ok_or(StoreError::NotFound))
    }

    pub fn import(&self, rows: &[NewBinding], audit: &AuditEvent) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for new in rows {
            // A unique-key violation converts to AlreadyExists.
            insert_binding(&tx, new)?;
        }
        insert_audit(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    pub fn bind(
        &self,
        new: &NewBinding,
        audit: &AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (mailbox, client) = (new.mailbox.as_str(), new.client.as_str());
        match get_row(&tx, mailbox, client)? {
            Some(row) if row.state == CredentialState::Active => {
                return Err(StoreError::AlreadyExists);
            }
            Some(_) => {
                tx.execute("DELETE FROM credentials WHERE mailbox = ?1 AND client = ?2", params![mailbox, client])?;
            }
            None => {}
        }
        insert_binding(&tx, new)?;
        insert_audit(&tx, audit)?;
        let row = get_row(&tx, mailbox, client)?.ok_or(StoreError::NotFound)?;
        requests::insert(&tx, request, &row)?;
        tx.commit()?;
        Ok(row)
    }

    pub fn rotate(
        &self,
        c: &RotateChange,
        audit: &AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let row = self.rotate_row(c, audit, request)?;
        self.shred_wal();
        Ok(row)
    }

    fn rotate_row(
        &self,
        c: &RotateChange,
        audit: &AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        self.write(&c.mailbox, &c.client, request, |tx, row| {
            row.check_current(Some(c.from_version))?;
            let next = i64::try_from(c.from_version + 1).map_err(|_| StoreError::Conflict)?;
            tx.execute(
                "UPDATE credentials SET version = ?3, key_id = ?4, nonce = ?5, ciphertext = ?6, rotated_at = ?7, \
                 last_verified_at = ?7, last_probe_outcome = ?8, generation = ?9 WHERE mailbox = ?1 AND client = ?2",
                params![
                    c.mailbox,
                    c.client,
                    next,
                    c.code.key_id,
                    &c.code.sealed.nonce[..],
                    &c.code.sealed.ciphertext,
                    c.now,
                    ProbeOutcome::Accepted as i32,
                    c.code.generation.as_ref().map(|g| &g[..])
                ],
            )?;
            insert_audit(tx, audit)
        })
    }

    pub fn revoke(
        &self,
        c: &RevokeChange,
        audit: &AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let row = self.revoke_row(c, audit, request)?;
        self.shred_wal();
        Ok(row)
    }

    fn revoke_row(
        &self,
        c: &RevokeChange,
        audit: &AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let (mailbox, client, reason, now) = (&c.mailbox, &c.client, &c.reason, c.now);
        self.write(mailbox, client, request, |tx, row| {
            row.check_current(None)?;
            tx.execute(
                "UPDATE credentials SET state = 2, key_id = NULL, nonce = NULL, ciphertext = NULL, generation = NULL, \
                 revoked_at = ?3, revoke_reason = ?4 WHERE mailbox = ?1 AND client = ?2",
                params![mailbox, client, now, reason],
            )?;
            insert_audit(tx, audit)
        })
    }

    pub fn record_probe(&self, p: &ProbeRecord, audit: &AuditEvent) -> Result<CredentialRow, StoreError> {
        let (mailbox, client, version, outcome, now) = (&p.mailbox, &p.client, p.version, p.outcome, p.now);
        self.write(mailbox, client, None, |tx, row| {
            row.check_current(Some(version))?;
            tx.execute(
                "UPDATE credentials SET last_verified_at = ?3, last_probe_outcome = ?4 WHERE mailbox = ?1 AND client = ?2",
                params![mailbox, client, now, outcome as i32],
            )?;
            insert_audit(tx, audit)
        })
    }

    pub fn audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_audit(&tx, event)?;
        tx.commit()?;
        Ok(())
    }

    pub fn record_reveals(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for e in events {
            insert_audit(&tx, e)?;
            tx.prepare_cached(
                "UPDATE credentials SET last_used_at = max(coalesce(last_used_at, 0), ?3) \
                 WHERE mailbox = ?1 AND client = ?2",
            )?
            .execute(params![e.mailbox, e.client, e.at])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn list(&self, q: &ListQuery) -> Result<Vec<CredentialRow>, StoreError> {
        self.with_reader(|conn| rows::list(conn, q))
    }

    pub fn list_unused(&self, q: &UnusedQuery) -> Result<Vec<CredentialRow>, StoreError> {
        self.with_reader(|conn| rows::list_unused(conn, q))
    }

    pub fn audit_events(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.with_reader(|conn| rows::audit_events(conn, q))
    }

    pub fn count_by_state(&self) -> Result<(u64, u64), StoreError> {
        self.with_reader(rows::count_by_state)
    }

    pub fn count_by_outcome(&self) -> Result<Vec<(Option<ProbeOutcome>, u64)>, StoreError> {
        self.with_reader(rows::count_by_outcome)
    }

    pub fn due_for_verification(
        &self,
        before: Millis,
        after: Option<&DuePosition>,
        limit: usize,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        self.with_reader(|conn| rows::due_for_verification(conn, before, after, limit))
    }

    pub fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        token_rows::insert(&mut *self.writer()?, t)
    }

    pub fn tokens(&self) -> Result<Vec<Result<TokenRow, UnreadableToken>>, StoreError> {
        self.with_tokens_reader(token_rows::all)
    }

    /// Revokes a token (destroying its MAC), then truncates the WAL, so the old row, MAC
    /// included, leaves the live files and cannot be copied back from there.
    pub fn revoke_token(&self, id: &str, now: Millis) -> Result<(), StoreError> {
        token_rows::revoke(&mut *self.writer()?, id, now)?;
        self.shred_wal();
        Ok(())
    }

    pub fn record_token_use(&self, uses: &[(String, Millis)]) -> Result<(), StoreError> {
        token_rows::record_use(&mut *self.writer()?, uses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Key, Keyring};

    #[test]
    fn a_file_holds_nothing_only_without_any_vault_row_whatever_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a dir?#%é");
        std::fs::create_dir(&dir).unwrap();
        let (_, wrapped) = Keyring::generate(&Key::random());
        let material = UnlockMaterial { salt: Salt([0; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
        let path = dir.join("v.db");
        drop(Db::create(&path, &material, 0).unwrap());
        assert!(!Db::holds_nothing(&path).unwrap(), "a vault");
        let empty = dir.join("e.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(Db::holds_nothing(&empty).unwrap());
        std::fs::write(&empty, b"not sqlite at all, long enough to be read as a header.....").unwrap();
        assert!(Db::holds_nothing(&empty).is_err(), "an unreadable file is never taken as empty");
    }

    /// An empty database in a temp dir (kept alive by the returned guard).
    fn fresh() -> (tempfile::TempDir, Db) {
        let tmp = tempfile::tempdir().unwrap();
        let (_, wrapped) = Keyring::generate(&Key::random());
        let material = UnlockMaterial { salt: Salt([0; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
        let db = Db::create(&tmp.path().join("v.db"), &material, 0).unwrap();
        (tmp, db)
    }

    #[test]
    fn a_wal_left_by_a_crash_is_an_owed_truncation_until_one_finishes() {
        let (tmp, db) = fresh();
        lock(&db.writer).execute("UPDATE vault_meta SET created_at = 7", []).unwrap();
        // A copy of the files while the WAL holds that commit: what a kill -9 leaves.
        let copy = tmp.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        for name in ["v.db", "v.db-wal"] {
            std::fs::copy(tmp.path().join(name), copy.join(name)).unwrap();
        }
        let wal = copy.join("v.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        let crashed = Db::open(&copy.join("v.db")).unwrap();
        assert!(crashed.shred_owed(), "a non-empty WAL at open is owed a truncation");
        assert!(crashed.shred_wal());
        assert!(!crashed.shred_owed());
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        let at: i64 = lock(&crashed.writer).query_row("SELECT created_at FROM vault_meta", [], |r| r.get(0)).unwrap();
        assert_eq!(at, 7, "the commit in the WAL was kept");
    }

    #[test]
    fn a_retried_truncation_steps_aside_for_a_reader_and_stays_owed_until_it_finishes() {
        let (_tmp, db) = fresh();
        lock(&db.writer).execute("UPDATE vault_meta SET created_at = 7", []).unwrap();
        // A long reader (a backup's snapshot) holds the WAL.
        let reader = db.acquire_reader().unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM vault_meta;").unwrap();
        let started = std::time::Instant::now();
        assert!(!db.shred_wal_now().unwrap(), "truncated under a reader");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "the retry waited like a change");
        assert!(db.shred_owed());
        reader.execute_batch("COMMIT").unwrap();
        assert!(db.shred_wal_now().unwrap());
        assert!(!db.shred_owed());
    }

    #[test]
    fn a_truncation_another_process_left_owed_is_owed_here_until_one_finishes() {
        let (tmp, server) = fresh();
        // A `token revoke` beside the running server: its own handle on the file.
        let command = Db::open(&tmp.path().join("v.db")).unwrap();
        assert!(server.shred_wal_now().unwrap() && !server.shred_owed());
        lock(&command.writer).execute("UPDATE vault_meta SET created_at = 7", []).unwrap();
        let reader = server.acquire_reader().unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM vault_meta;").unwrap();
        assert!(!command.shred_wal_now().unwrap(), "truncated under a reader");
        drop(command);
        // The command has ended; the server learns it owes the truncation, and pays it.
        assert!(server.shred_owed(), "the command's failed truncation was forgotten with it");
        reader.execute_batch("COMMIT").unwrap();
        assert!(server.shred_wal_now().unwrap());
        assert!(!server.shred_owed());
        let marker = maintenance::owed_marker(&tmp.path().join("v.db"));
        assert!(!marker.exists());
        assert_eq!(std::fs::metadata(tmp.path().join("v.db-wal")).unwrap().len(), 0);
        // A record made while a checkpoint ran (none was there before it) may be for a commit
        // after it: a finished truncation leaves it.
        std::fs::write(&marker, "").unwrap();
        server.mark_owed(false, None);
        assert!(marker.exists(), "a record made during the checkpoint was erased");
    }

    #[test]
    fn the_token_table_is_read_while_every_pooled_reader_is_busy() {
        let (_tmp, db) = fresh();
        let db = std::sync::Arc::new(db);
        // Reveal misses hold the whole pool (and more wait for it).
        let held: Vec<Connection> = (0..MAX_READERS).map(|_| db.acquire_reader().unwrap()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let reading = db.clone();
        std::thread::spawn(move || tx.send(reading.tokens().map(|t| t.len())).unwrap());
        let read = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the token read waited for the pool");
        assert_eq!(read.unwrap(), 0);
        drop(held);
    }

    #[test]
    fn a_point_read_here_sees_committed_rows_and_steps_aside_when_its_reader_is_taken() {
        let (_tmp, db) = fresh();
        let key_id: u32 = lock(&db.writer).query_row("SELECT key_id FROM keyring", [], |r| r.get(0)).unwrap();
        let insert = "INSERT INTO credentials (mailbox, client, provider, state, version, key_id, nonce, ciphertext, \
                      created_at, generation) VALUES (?1, 'x', 'sina', 1, 1, ?2, zeroblob(24), x'0102', 1, zeroblob(16))";
        lock(&db.writer).execute(insert, params!["a@sina.com", key_id]).unwrap();
        let row = db.get_here("a@sina.com", "x").expect("read here").unwrap();
        assert_eq!((row.version, row.provider.as_str()), (1, "sina"));
        assert!(matches!(db.get_here("b@sina.com", "x"), Some(Err(StoreError::NotFound))));
        // A writer's open transaction neither blocks the read nor shows through it.
        {
            let mut writer = lock(&db.writer);
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
            tx.execute(insert, params!["b@sina.com", key_id]).unwrap();
            tx.execute("UPDATE credentials SET version = 2 WHERE mailbox = 'a@sina.com'", []).unwrap();
            assert_eq!(db.get_here("a@sina.com", "x").expect("read here").unwrap().version, 1);
            assert!(matches!(db.get_here("b@sina.com", "x"), Some(Err(StoreError::NotFound))));
            tx.commit().unwrap();
        }
        assert_eq!(db.get_here("a@sina.com", "x").expect("read here").unwrap().version, 2);
        // This thread's reader in use (a re-entrant call, say): the caller goes to the pool.
        let _held = lock(&db.here[here_slot()]);
        assert!(db.get_here("a@sina.com", "x").is_none(), "waited for, or shared, a reader in use");
        assert_eq!(db.get("a@sina.com", "x").unwrap().version, 2);
    }

    #[test]
    fn a_trigger_planted_while_serving_makes_writes_fail_and_copies_nothing() {
        let (tmp, db) = fresh();
        let key_id: u32 = lock(&db.writer).query_row("SELECT key_id FROM keyring", [], |r| r.get(0)).unwrap();
        let insert = "INSERT INTO credentials (mailbox, client, provider, state, version, key_id, nonce, ciphertext, \
                      created_at, generation) VALUES ('a@sina.com', 'x', 'sina', 1, 1, ?1, zeroblob(24), x'0102', 1, \
                      zeroblob(16))";
        lock(&db.writer).execute(insert, [key_id]).unwrap();
        let used = AuditEvent {
            at: 5,
            caller: "tk_a".into(),
            caller_role: "client:x".into(),
            rpc: "Reveal".into(),
            mailbox: "a@sina.com".into(),
            client: "x".into(),
            outcome: "OK".into(),
            probe_outcome: None,
            count: 1,
            first_at: 5,
            reason: String::new(),
        };
        // Its statements are prepared (and cached) before the trigger exists.
        db.record_reveals(std::slice::from_ref(&used)).unwrap();
        let attacker = Connection::open(tmp.path().join("v.db")).unwrap();
        attacker
            .execute_batch(
                "PRAGMA writable_schema = ON; CREATE TABLE sqlite_loot (c BLOB); \
                 CREATE TRIGGER sqlite_keep BEFORE UPDATE ON credentials \
                 BEGIN INSERT INTO sqlite_loot VALUES (old.ciphertext); END;",
            )
            .unwrap();
        let refused = db.record_reveals(std::slice::from_ref(&used));
        assert!(matches!(&refused, Err(StoreError::Corrupt(m)) if m.contains("trigger or view")), "{refused:?}");
        let loot: i64 = attacker.query_row("SELECT count(*) FROM sqlite_loot", [], |r| r.get(0)).unwrap();
        assert_eq!(loot, 0, "the trigger copied a ciphertext");
        attacker.execute_batch("DROP TRIGGER sqlite_keep;").unwrap();
        db.record_reveals(&[used]).unwrap();
    }

    /// What `EXPLAIN QUERY PLAN` says of `sql` run with `values`, a line per step.
    fn explain(conn: &rusqlite::Connection, sql: &str, values: impl rusqlite::Params) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map(values, |r| r.get::<_, String>(3)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn the_metrics_counts_read_a_covering_index_not_the_table() {
        let (_tmp, store) = fresh();
        let conn = lock(&store.writer);
        for query in [rows::COUNT_BY_STATE, rows::COUNT_BY_OUTCOME] {
            let plan = explain(&conn, query, []);
            assert_eq!(plan, ["SCAN credentials USING COVERING INDEX credentials_by_outcome_state"], "{query}");
        }
    }

    #[test]
    fn the_start_up_search_for_legacy_seals_reads_only_its_partial_index() {
        let (_tmp, store) = fresh();
        let conn = lock(&store.writer);
        let query = format!("SELECT {} FROM credentials {}", rows::COLUMNS, maintenance::LEGACY_SEALED);
        let plan = explain(&conn, &query, [1]);
        // SCAN, not SEARCH: the partial index holds exactly the rows wanted (almost always none).
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(
            plan[0].starts_with("SCAN credentials USING ") && plan[0].ends_with("credentials_legacy_sealed"),
            "{plan:?}"
        );
    }

    #[test]
    fn an_audit_page_reads_the_index_of_its_filter() {
        let (_tmp, store) = fresh();
        let conn = lock(&store.writer);
        let query = |mailbox: Option<&str>, client: Option<&str>, caller: Option<&str>| AuditQuery {
            mailbox: mailbox.map(str::to_owned),
            client: client.map(str::to_owned),
            caller: caller.map(str::to_owned),
            since: None,
            until: None,
            before: None,
            limit: 10,
        };
        let m = Some("a@sina.com");
        for (q, index) in [
            (query(m, Some("x"), None), "audit_events_by_pair"),
            (query(m, Some("x"), Some("t")), "audit_events_by_pair"),
            (query(None, None, Some("t")), "audit_events_by_caller"),
            (query(None, Some("x"), Some("t")), "audit_events_by_caller"),
            (query(m, None, None), "audit_events_by_time"),
            (query(None, Some("x"), None), "audit_events_by_time"),
            (query(None, None, None), "audit_events_by_time"),
        ] {
            let sql = rows::audit_page_sql(&q);
            let values = params![1, q.mailbox, q.client, q.caller, None::<i64>, None::<i64>, 10, 1];
            let plan = explain(&conn, sql, values);
            let plan = plan.join("; ");
            assert!(plan.starts_with(&format!("SEARCH audit_events USING INDEX {index} (")), "{q:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "the ORDER BY must come from the index: {q:?}: {plan}");
        }
    }

    #[test]
    fn a_list_page_reads_the_key_or_index_of_its_filter() {
        let (_tmp, store) = fresh();
        let conn = lock(&store.writer);
        let m = Some("a@sina.com".to_owned());
        let c = Some("x".to_owned());
        for (q, reads) in [
            (ListQuery { mailbox: m.clone(), ..ListQuery::default() }, "PRIMARY KEY (mailbox=?"),
            (ListQuery { mailbox: m, client: c.clone(), ..ListQuery::default() }, "PRIMARY KEY (mailbox=?"),
            (ListQuery { client: c, ..ListQuery::default() }, "INDEX credentials_by_client (client=? AND mailbox>?)"),
            (ListQuery::default(), "PRIMARY KEY ((mailbox,client)>(?,?))"),
        ] {
            let sql = rows::list_sql(&q);
            let values = params![q.mailbox, q.client, false, "", "", 10, None::<i64>, None::<i64>];
            let plan = explain(&conn, &sql, values);
            let plan = plan.join("; ");
            assert!(plan.starts_with(&format!("SEARCH credentials USING {reads}")), "{q:?}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "the ORDER BY must come from the key or index: {q:?}: {plan}");
        }
    }

    #[test]
    fn the_review_query_walks_its_index() {
        let (_tmp, store) = fresh();
        let conn = lock(&store.writer);
        let plan = explain(
            &conn,
            &format!("SELECT mailbox FROM credentials {}", rows::UNUSED_PAGE),
            params![0, None::<String>, 0, "", "", 10],
        );
        let plan = plan.join("; ");
        // Later pages start at their cursor, not at the oldest unused binding.
        assert!(plan.contains("credentials_unused (<expr>>? AND <expr><?)"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "the ORDER BY must come from the index: {plan}");
        // One mailbox: its own bindings, not every unused one.
        let plan = explain(
            &conn,
            &format!("SELECT mailbox FROM credentials {}", rows::UNUSED_MAILBOX_PAGE),
            params![0, "a@sina.com", 0, "", "", 10],
        );
        assert!(plan[0].starts_with("SEARCH credentials USING PRIMARY KEY (mailbox=?"), "{plan:?}");
    }

    #[test]
    fn the_sweeps_page_starts_where_the_last_one_stopped() {
        let (_tmp, store) = fresh();
        let conn = lock(&store.writer);
        let sql = format!("SELECT mailbox FROM credentials {}", rows::DUE_PAGE);
        let plan = explain(&conn, &sql, params![10, 5, "a@sina.com", "x", 64]).join("; ");
        // A range on the whole (time, mailbox, client) key, not the oldest rows read past again.
        assert!(plan.contains("credentials_by_verification (<expr>>? AND <expr><?)"), "{plan}");
        assert!(plan.contains("SEARCH"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "the ORDER BY must come from the index: {plan}");
    }
}

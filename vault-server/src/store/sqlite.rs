//! The SQLite store: one writer connection (IMMEDIATE transactions) and a small pool of readers.
//! WAL with `synchronous=FULL`, so an acknowledged write survives power loss.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    AuditEvent, AuditQuery, AuditRecord, CredentialRow, CredentialState, ListQuery, Millis, NewBinding, RotateChange,
    Store, StoreError, StoredCode, TokenRow, UnlockMaterial, UnusedQuery, migrate,
};
use crate::crypto::{KdfParams, Salt, Sealed, WrappedKey};
use crate::probe::ProbeOutcome;

/// Readers kept open for reuse; more are opened on demand under load.
const MAX_IDLE_READERS: usize = 8;

/// The review's page: the range and the ORDER BY match the partial index credentials_unused.
const UNUSED_PAGE: &str = "WHERE state = 1 AND coalesce(last_used_at, created_at) < ?1 AND (?2 IS NULL OR mailbox = ?2) \
     AND (coalesce(last_used_at, created_at), mailbox, client) > (?3, ?4, ?5) \
     ORDER BY coalesce(last_used_at, created_at), mailbox, client LIMIT ?6";

const COLUMNS: &str = "mailbox, client, provider, state, version, key_id, nonce, ciphertext, created_at, \
     rotated_at, revoked_at, revoke_reason, last_used_at, last_verified_at, last_probe_outcome";

pub struct SqliteStore {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Freed pages are zeroed, so a revoked or rotated ciphertext does not linger in the file.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    configure(&conn)?;
    Ok(conn)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-done SQLite transaction behind (it rolls
    // back on drop), so the connection is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SqliteStore {
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
        Ok(Self { path: path.to_owned(), writer: Mutex::new(conn), readers: Mutex::new(Vec::new()) })
    }

    /// Opens an existing database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::NotInitialised);
        }
        let mut conn = open_conn(path)?;
        migrate::apply(&mut conn)?;
        Ok(Self { path: path.to_owned(), writer: Mutex::new(conn), readers: Mutex::new(Vec::new()) })
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = lock(&self.readers).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let out = f(&conn);
        let mut idle = lock(&self.readers);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    /// One IMMEDIATE transaction on an existing row: `change` sees the row as it is now, writes,
    /// and the row is read back before commit.
    fn write(
        &self,
        mailbox: &str,
        client: &str,
        change: impl FnOnce(&rusqlite::Transaction<'_>, &CredentialRow) -> Result<(), StoreError>,
    ) -> Result<CredentialRow, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = get_row(&tx, mailbox, client)?.ok_or(StoreError::NotFound)?;
        change(&tx, &row)?;
        let row = get_row(&tx, mailbox, client)?.ok_or(StoreError::NotFound)?;
        tx.commit()?;
        Ok(row)
    }

    /// Checkpoints the WAL into the main file; used at shutdown.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        lock(&self.writer).execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(())
    }
}

fn blob_array<const N: usize>(v: Vec<u8>, what: &str) -> Result<[u8; N], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt(format!("{what} has the wrong length")))
}

fn outcome_from(v: Option<i64>) -> Option<ProbeOutcome> {
    v.and_then(|v| i32::try_from(v).ok()).and_then(ProbeOutcome::from_i32)
}

fn read_row(r: &Row<'_>) -> rusqlite::Result<CredentialRow> {
    let state = match r.get::<_, i64>(3)? {
        1 => CredentialState::Active,
        _ => CredentialState::Revoked,
    };
    let key_id: Option<u32> = r.get(5)?;
    let nonce: Option<Vec<u8>> = r.get(6)?;
    let ciphertext: Option<Vec<u8>> = r.get(7)?;
    let code = match (key_id, nonce, ciphertext) {
        (Some(key_id), Some(nonce), Some(ciphertext)) => {
            // A nonce of the wrong length cannot authenticate; an all-zero one makes that explicit.
            let nonce = nonce.try_into().unwrap_or([0u8; 24]);
            Some(StoredCode { key_id, sealed: Sealed { nonce, ciphertext } })
        }
        _ => None,
    };
    Ok(CredentialRow {
        mailbox: r.get(0)?,
        client: r.get(1)?,
        provider: r.get(2)?,
        state,
        version: r.get::<_, i64>(4)?.try_into().unwrap_or(0),
        code,
        created_at: r.get(8)?,
        rotated_at: r.get(9)?,
        revoked_at: r.get(10)?,
        revoke_reason: r.get(11)?,
        last_used_at: r.get(12)?,
        last_verified_at: r.get(13)?,
        last_probe_outcome: outcome_from(r.get(14)?),
    })
}

fn get_row(conn: &Connection, mailbox: &str, client: &str) -> Result<Option<CredentialRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM credentials WHERE mailbox = ?1 AND client = ?2");
    Ok(conn.prepare_cached(&sql)?.query_row(params![mailbox, client], read_row).optional()?)
}

fn insert_audit(tx: &rusqlite::Transaction<'_>, e: &AuditEvent) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO audit_events (at, caller, caller_role, rpc, mailbox, client, outcome, probe_outcome, count, \
         first_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        e.at,
        e.caller,
        e.caller_role,
        e.rpc,
        e.mailbox,
        e.client,
        e.outcome,
        e.probe_outcome.map(|o| o as i32),
        i64::try_from(e.count).unwrap_or(i64::MAX),
        e.first_at
    ])?;
    Ok(())
}

impl Store for SqliteStore {
    fn unlock_material(&self) -> Result<UnlockMaterial, StoreError> {
        self.with_reader(|conn| {
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
        })
    }

    fn get(&self, mailbox: &str, client: &str) -> Result<CredentialRow, StoreError> {
        self.with_reader(|conn| get_row(conn, mailbox, client)?.ok_or(StoreError::NotFound))
    }

    fn bind(&self, new: NewBinding<'_>, audit: &AuditEvent) -> Result<CredentialRow, StoreError> {
        let mut conn = lock(&self.writer);
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
        tx.execute(
            "INSERT INTO credentials (mailbox, client, provider, state, version, key_id, nonce, ciphertext, \
             created_at, last_verified_at, last_probe_outcome) VALUES (?1, ?2, ?3, 1, 1, ?4, ?5, ?6, ?7, ?7, ?8)",
            params![
                mailbox,
                client,
                new.provider,
                new.code.key_id,
                &new.code.sealed.nonce[..],
                &new.code.sealed.ciphertext,
                new.now,
                new.probe_outcome as i32
            ],
        )?;
        insert_audit(&tx, audit)?;
        let row = get_row(&tx, mailbox, client)?.ok_or(StoreError::NotFound)?;
        tx.commit()?;
        Ok(row)
    }

    fn rotate(&self, c: RotateChange<'_>, audit: &AuditEvent) -> Result<CredentialRow, StoreError> {
        self.write(c.mailbox, c.client, |tx, row| {
            if row.state != CredentialState::Active {
                return Err(StoreError::Revoked);
            }
            if row.version != c.from_version {
                return Err(StoreError::Conflict);
            }
            let next = i64::try_from(c.from_version + 1).map_err(|_| StoreError::Conflict)?;
            tx.execute(
                "UPDATE credentials SET version = ?3, key_id = ?4, nonce = ?5, ciphertext = ?6, rotated_at = ?7, \
                 last_verified_at = ?7, last_probe_outcome = ?8 WHERE mailbox = ?1 AND client = ?2",
                params![
                    c.mailbox,
                    c.client,
                    next,
                    c.code.key_id,
                    &c.code.sealed.nonce[..],
                    &c.code.sealed.ciphertext,
                    c.now,
                    ProbeOutcome::Accepted as i32
                ],
            )?;
            insert_audit(tx, audit)
        })
    }

    fn revoke(
        &self,
        mailbox: &str,
        client: &str,
        reason: &str,
        now: Millis,
        audit: &AuditEvent,
    ) -> Result<CredentialRow, StoreError> {
        self.write(mailbox, client, |tx, row| {
            if row.state != CredentialState::Active {
                return Err(StoreError::Revoked);
            }
            tx.execute(
                "UPDATE credentials SET state = 2, key_id = NULL, nonce = NULL, ciphertext = NULL, revoked_at = ?3, \
                 revoke_reason = ?4 WHERE mailbox = ?1 AND client = ?2",
                params![mailbox, client, now, reason],
            )?;
            insert_audit(tx, audit)
        })
    }

    fn record_probe(
        &self,
        mailbox: &str,
        client: &str,
        version: u64,
        outcome: ProbeOutcome,
        now: Millis,
        audit: &AuditEvent,
    ) -> Result<CredentialRow, StoreError> {
        self.write(mailbox, client, |tx, row| {
            if row.state != CredentialState::Active {
                return Err(StoreError::Revoked);
            }
            if row.version != version {
                return Err(StoreError::Conflict);
            }
            tx.execute(
                "UPDATE credentials SET last_verified_at = ?3, last_probe_outcome = ?4 WHERE mailbox = ?1 AND client = ?2",
                params![mailbox, client, now, outcome as i32],
            )?;
            insert_audit(tx, audit)
        })
    }

    fn list(&self, q: &ListQuery) -> Result<Vec<CredentialRow>, StoreError> {
        self.with_reader(|conn| {
            let (after_m, after_c) = q.after.clone().unwrap_or_default();
            let sql = format!(
                "SELECT {COLUMNS} FROM credentials \
                 WHERE (?1 IS NULL OR mailbox = ?1) AND (?2 IS NULL OR client = ?2) AND (?3 OR state = 1) \
                 AND (mailbox, client) > (?4, ?5) ORDER BY mailbox, client LIMIT ?6"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
            let rows =
                stmt.query_map(params![q.mailbox, q.client, q.include_revoked, after_m, after_c, limit], read_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_audit(&tx, event)?;
        tx.commit()?;
        Ok(())
    }

    fn list_unused(&self, q: &UnusedQuery) -> Result<Vec<CredentialRow>, StoreError> {
        self.with_reader(|conn| {
            let sql = format!("SELECT {COLUMNS} FROM credentials {UNUSED_PAGE}");
            let (k, m, c) = q.after.clone().unwrap_or((i64::MIN, String::new(), String::new()));
            let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![q.cutoff, q.mailbox, k, m, c, limit], read_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn record_reveals(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
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

    fn audit_events(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at, caller, caller_role, rpc, mailbox, client, outcome, probe_outcome, count, first_at \
                 FROM audit_events WHERE id < ?1 AND (?2 IS NULL OR mailbox = ?2) AND (?3 IS NULL OR client = ?3) \
                 AND (?4 IS NULL OR caller = ?4) AND (?5 IS NULL OR at >= ?5) AND (?6 IS NULL OR at < ?6) \
                 ORDER BY id DESC LIMIT ?7",
            )?;
            let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
            let before = q.before_id.unwrap_or(i64::MAX);
            let rows =
                stmt.query_map(params![before, q.mailbox, q.client, q.caller, q.since, q.until, limit], |r| {
                    Ok(AuditRecord {
                        id: r.get(0)?,
                        event: AuditEvent {
                            at: r.get(1)?,
                            caller: r.get(2)?,
                            caller_role: r.get(3)?,
                            rpc: r.get(4)?,
                            mailbox: r.get(5)?,
                            client: r.get(6)?,
                            outcome: r.get(7)?,
                            probe_outcome: outcome_from(r.get(8)?),
                            count: r.get::<_, i64>(9)?.try_into().unwrap_or(0),
                            first_at: r.get(10)?,
                        },
                    })
                })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn count_by_state(&self) -> Result<(u64, u64), StoreError> {
        self.with_reader(|conn| {
            let (a, r): (i64, i64) = conn.query_row(
                "SELECT count(*) FILTER (WHERE state = 1), count(*) FILTER (WHERE state = 2) FROM credentials",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok((a.try_into().unwrap_or(0), r.try_into().unwrap_or(0)))
        })
    }

    fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO tokens (id, role, digest, key_id, mac, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.id, t.role, t.digest, t.key_id, t.mac, t.created_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, role, digest, key_id, mac, created_at, last_used_at, revoked_at FROM tokens ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    role: r.get(1)?,
                    digest: r.get(2)?,
                    key_id: r.get(3)?,
                    mac: r.get(4)?,
                    created_at: r.get(5)?,
                    last_used_at: r.get(6)?,
                    revoked_at: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn revoke_token(&self, id: &str, now: Millis) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revoked: Option<Option<i64>> =
            tx.query_row("SELECT revoked_at FROM tokens WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        match revoked {
            None => return Err(StoreError::NotFound),
            Some(Some(_)) => return Err(StoreError::Revoked),
            Some(None) => {}
        }
        tx.execute("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1", params![id, now])?;
        tx.commit()?;
        Ok(())
    }

    fn record_token_use(&self, uses: &[(String, Millis)]) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE tokens SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1")?;
            for (id, at) in uses {
                stmt.execute(params![id, at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Key, Keyring};

    #[test]
    fn the_review_query_walks_its_index() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, wrapped) = Keyring::generate(&Key::random());
        let material = UnlockMaterial { salt: Salt([0; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
        let store = SqliteStore::create(&tmp.path().join("v.db"), &material, 0).unwrap();
        let conn = lock(&store.writer);
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN SELECT mailbox FROM credentials {UNUSED_PAGE}"))
            .unwrap()
            .query_map(params![0, None::<String>, 0, "", "", 10], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains("credentials_unused"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "the ORDER BY must come from the index: {plan}");
    }
}

//! The store traits over PostgreSQL. Writes lock the pair's row (`FOR UPDATE`) in a READ
//! COMMITTED transaction; a first Bind racing another is settled by the primary key.

use std::sync::Arc;

use deadpool_postgres::Transaction;

use super::PgStore;
use super::rows::{self, INSERT_AUDIT, audit_values, refs};
use crate::crypto::{KeyId, Salt, WrappedKey};
use crate::outcome::ProbeOutcome;
use crate::store::{
    AuditEvent, AuditQuery, AuditRecord, AuditStore, Bucket, Changes, CredentialRow, CredentialState, CredentialStore,
    DataKeyInfo, DuePosition, KeyMaterialStore, ListQuery, Millis, NewBinding, ProbeRecord, RecordedAnswer, RequestKey,
    RequestRecord, Reseal, Retirement, RevokeChange, RotateChange, StoreError, StoredRequest, TokenRekey, TokenRow,
    TokenStore, UnlockMaterial, UnreadableToken, UnusedQuery,
};

/// A boxed future (a write's step, run inside its transaction).
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Change-log reads between trims of the log.
const TRIM_EVERY_POLLS: u64 = 300;
/// How long every reader has to see a change before it may be trimmed.
const TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn insert_audit(tx: &Transaction<'_>, e: &AuditEvent) -> Result<(), StoreError> {
    let stmt = tx.prepare_cached(INSERT_AUDIT).await?;
    let values = audit_values(e);
    tx.execute(&stmt, &refs(&values)).await?;
    Ok(())
}

async fn get_row(
    tx: &Transaction<'_>,
    mailbox: &str,
    client: &str,
    lock: bool,
) -> Result<Option<CredentialRow>, StoreError> {
    let sql = if lock { rows::lock_sql() } else { rows::get_sql() };
    let stmt = tx.prepare_cached(&sql).await?;
    tx.query_opt(&stmt, &[&mailbox, &client]).await?.as_ref().map(rows::read_row).transpose()
}

async fn insert_binding(tx: &Transaction<'_>, new: &NewBinding) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO credentials (mailbox, client, provider, state, version, key_id, nonce, ciphertext, \
             created_at, last_verified_at, last_probe_outcome, generation) \
             VALUES ($1, $2, $3, 1, 1, $4, $5, $6, $7, $7, $8, $9)",
        )
        .await?;
    let generation = new.code.generation.as_ref().map(|g| &g[..]);
    tx.execute(
        &stmt,
        &[
            &new.mailbox.as_str(),
            &new.client.as_str(),
            &new.provider,
            &i64::from(new.code.key_id),
            &&new.code.sealed.nonce[..],
            &new.code.sealed.ciphertext,
            &new.now,
            &(new.probe_outcome as i32),
            &generation,
        ],
    )
    .await?;
    Ok(())
}

/// Remembers `r` with its answer for `row` inside the write's transaction (see the SQLite twin).
async fn insert_request(tx: &Transaction<'_>, r: Option<RequestRecord>, row: &CredentialRow) -> Result<(), StoreError> {
    let Some(r) = r else { return Ok(()) };
    tx.execute("DELETE FROM requests WHERE created_at < $1", &[&r.forget_before]).await?;
    let answer = (r.answer)(row);
    let inserted = tx
        .execute(
            "INSERT INTO requests (caller, request_id, rpc, fingerprint, key_id, answer, mac, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            &[
                &r.caller,
                &r.request_id,
                &r.rpc,
                &r.fingerprint,
                &i64::from(r.key_id),
                &answer.bytes,
                &answer.mac,
                &r.now,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::RequestIdTaken);
    }
    Ok(())
}

impl PgStore {
    /// Whether the transaction `xid` (from `pg_current_xact_id()`), whose COMMIT went
    /// unanswered, was committed: asked on another connection, again while it is in progress
    /// (a COMMIT that reached the server finishes) or the server cannot be reached (it may be
    /// restarting), for about 5 s. `None` if it cannot tell by then.
    async fn committed(&self, xid: &str) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        // Outside the pool (see `PgStore::direct`), opened again after an error.
        let mut conn: Option<tokio_postgres::Client> = None;
        while tokio::time::Instant::now() < deadline {
            let status = async {
                if conn.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
                    let (config, tls) = &*self.direct;
                    let (client, connection) = config.connect(tls.clone()).await?;
                    tokio::spawn(connection);
                    conn = Some(client);
                }
                let client = conn.as_ref().ok_or_else(|| StoreError::Unavailable("no connection".into()))?;
                let row = client.query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid]).await?;
                Ok::<_, StoreError>(row.try_get::<_, Option<String>>(0)?)
            };
            match tokio::time::timeout_at(deadline, status).await {
                Ok(Ok(Some(s))) if s == "committed" => return Some(true),
                Ok(Ok(Some(s))) if s == "aborted" => return Some(false),
                // Too old to know: never the case seconds after the COMMIT.
                Ok(Ok(None)) => return None,
                // In progress, unreachable, or an error (a server that has not seen the id yet,
                // after a failover, says it is "in the future"): ask again, and at the end say
                // it cannot tell rather than fail otherwise.
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        None
    }

    /// Commits a change. When the COMMIT goes unanswered (the connection was lost), asks the
    /// database whether it was made ([`Self::committed`]): made is `Ok`, not made is
    /// `Unavailable` (nothing was written), and only what it cannot tell is `OutcomeUnknown`.
    pub(super) async fn finish(&self, tx: Transaction<'_>) -> Result<(), StoreError> {
        let xid: String = tx.query_one("SELECT pg_current_xact_id()::text", &[]).await?.try_get(0)?;
        let lost = match tx.commit().await.map_err(StoreError::from) {
            Err(StoreError::Unavailable(m)) => m,
            other => return other,
        };
        match self.committed(&xid).await {
            Some(true) => Ok(()),
            Some(false) => Err(StoreError::Unavailable("the change was not committed".into())),
            None => Err(StoreError::OutcomeUnknown(lost)),
        }
    }

    /// One transaction on an existing, locked row: `change` sees it as it is, writes, and the row
    /// is read back before commit, when `request` (if any) is remembered with it.
    async fn write<F>(
        &self,
        mailbox: &str,
        client: &str,
        request: Option<RequestRecord>,
        change: F,
    ) -> Result<CredentialRow, StoreError>
    where
        F: for<'a> FnOnce(&'a Transaction<'a>, CredentialRow) -> BoxFuture<'a, Result<(), StoreError>>,
    {
        let mut client_conn = self.pool.get().await?;
        let tx = client_conn.transaction().await?;
        let row = get_row(&tx, mailbox, client, true).await?.ok_or(StoreError::NotFound)?;
        change(&tx, row).await?;
        let row = get_row(&tx, mailbox, client, false).await?.ok_or(StoreError::NotFound)?;
        insert_request(&tx, request, &row).await?;
        self.finish(tx).await?;
        Ok(row)
    }
}

#[tonic::async_trait]
impl KeyMaterialStore for PgStore {
    async fn unlock_material(&self) -> Result<UnlockMaterial, StoreError> {
        self.read_unlock_material().await
    }

    async fn data_keys(&self) -> Result<Vec<DataKeyInfo>, StoreError> {
        let client = self.pool.get().await?;
        let mut out = Vec::new();
        for r in client.query("SELECT key_id, created_at FROM keyring ORDER BY key_id", &[]).await? {
            let key_id = u32::try_from(r.try_get::<_, i64>(0)?)
                .map_err(|_| StoreError::Corrupt("a key id is out of range".into()))?;
            out.push(DataKeyInfo { key_id, created_at: r.try_get(1)? });
        }
        Ok(out)
    }

    async fn add_data_key(&self, salt: Salt, key: WrappedKey, now: Millis) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Locks the salt row: a passphrase change and this one run one after the other.
        let current = tx.query_opt("SELECT kdf_salt FROM vault_meta WHERE id = 1 FOR UPDATE", &[]).await?;
        let current: Option<Vec<u8>> = current.map(|r| r.try_get(0)).transpose()?;
        if current.as_deref() != Some(&salt.0[..]) {
            return Err(StoreError::Conflict);
        }
        let inserted = tx
            .execute(
                "INSERT INTO keyring (key_id, nonce, wrapped_dek, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&i64::from(key.key_id), &&key.sealed.nonce[..], &key.sealed.ciphertext, &now],
            )
            .await?;
        if inserted != 1 {
            return Err(StoreError::AlreadyExists);
        }
        self.finish(tx).await?;
        Ok(())
    }

    async fn retire_data_keys(&self, active: KeyId, invalid_tokens: Vec<String>) -> Result<Retirement, StoreError> {
        let active = i64::from(active);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // One retirement at a time, and no key added meanwhile.
        tx.execute("SELECT 1 FROM vault_meta WHERE id = 1 FOR UPDATE", &[]).await?;
        let pending_codes: i64 = tx
            .query_one("SELECT count(*) FROM credentials WHERE state = 1 AND key_id < $1", &[&active])
            .await?
            .try_get(0)?;
        tx.execute("UPDATE tokens SET key_id = $1 WHERE key_id < $1 AND mac = ''::bytea", &[&active]).await?;
        tx.execute("UPDATE tokens SET key_id = $1 WHERE key_id < $1 AND id = ANY($2)", &[&active, &invalid_tokens])
            .await?;
        let pending_tokens: i64 =
            tx.query_one("SELECT count(*) FROM tokens WHERE key_id < $1", &[&active]).await?.try_get(0)?;
        if pending_codes > 0 || pending_tokens > 0 {
            self.finish(tx).await?;
            return Ok(Retirement {
                retired: Vec::new(),
                pending_codes: u64::try_from(pending_codes).unwrap_or(0),
                pending_tokens: u64::try_from(pending_tokens).unwrap_or(0),
                destroyed: true,
            });
        }
        let mut retired = Vec::new();
        for r in tx.query("DELETE FROM keyring WHERE key_id < $1 RETURNING key_id", &[&active]).await? {
            retired.push(u32::try_from(r.try_get::<_, i64>(0)?).unwrap_or(u32::MAX));
        }
        retired.sort_unstable();
        self.finish(tx).await?;
        // PostgreSQL keeps deleted tuples until vacuumed, and WAL until recycled: the vault
        // cannot vouch for its files (see `destroy_freed`).
        let destroyed = retired.is_empty();
        Ok(Retirement { retired, pending_codes: 0, pending_tokens: 0, destroyed })
    }

    /// PostgreSQL's files are the database server's: dead tuples stay until VACUUM reuses their
    /// space, and WAL (and any archive of it) until recycled. Never `true`.
    async fn destroy_freed(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn scrubs_files(&self) -> bool {
        false
    }
}

/// What the last reads of the change log saw of the catalog (see [`super::guards::stamp`]).
#[derive(Debug, Default)]
pub(super) struct Guarded {
    /// The stamp every read since has been able to trust.
    noted: Option<String>,
    /// A new stamp, and the writers of `credentials` (virtual transaction ids) open when it was
    /// first seen: it is noted once none of them is.
    pending: Option<(String, Vec<String>)>,
}

#[tonic::async_trait]
impl CredentialStore for PgStore {
    fn shared(&self) -> bool {
        true
    }

    /// The cursor is the oldest transaction still running at the last read (its snapshot's
    /// xmin): rows of any transaction from there on are read again, so a change committed after
    /// a later-numbered one is never skipped.
    async fn changes_since(&self, cursor: Option<u64>) -> Result<Changes, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // A change made while the change log was not as its migrations made it is in no log: no
        // read vouches for the cache meanwhile. A read that finds any trigger or rule rewritten
        // since the last good one (a trigger disabled and enabled in one transaction is no
        // longer disabled when the read comes) drops the whole cache, and goes on dropping it
        // until every writer of `credentials` open then has ended: one still open under the
        // trigger or function as they were may commit unlogged. Waiting for them by their locks,
        // not with one, never holds up the writers.
        let catalog = super::guards::read(&*tx).await?;
        if let Err(e) = super::guards::check(&catalog, super::guards::Scope::ChangeLog) {
            *self.guarded.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Guarded::default();
            return Err(e);
        }
        let stamp = super::guards::stamp(&catalog);
        let (noted, waited) = {
            let guarded = self.guarded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let waited = guarded.pending.as_ref().filter(|(seen, _)| *seen == stamp).map(|(_, w)| w.clone());
            (guarded.noted.as_deref() == Some(&stamp), waited)
        };
        // `None`: nothing to wait for; else the writers open when the new stamp was first seen,
        // and whether all of them have ended.
        let settled = if noted {
            None
        } else {
            let open: Vec<String> = tx
                .query_one(
                    "SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}') FROM pg_locks \
                     WHERE locktype = 'relation' AND mode = 'RowExclusiveLock' AND relation = 'credentials'::regclass \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    &[],
                )
                .await?
                .try_get(0)?;
            let waited = waited.unwrap_or_else(|| open.clone());
            let ended = !waited.iter().any(|w| open.contains(w));
            Some((waited, ended))
        };
        let xmin: String =
            tx.query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[]).await?.try_get(0)?;
        let next = xmin.parse::<u64>().map_err(|_| StoreError::Corrupt("a transaction id is not a number".into()))?;
        // Noted once a read has succeeded: a failed one must not let the next skip the drop.
        let note = || {
            let mut guarded = self.guarded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match &settled {
                None => {}
                Some((_, true)) => *guarded = Guarded { noted: Some(stamp.clone()), pending: None },
                Some((waited, false)) => guarded.pending = Some((stamp.clone(), waited.clone())),
            }
        };
        // No cursor yet, or transaction ids went backwards (the database was restored or moved
        // to another cluster): nothing read before can be trusted.
        let Some(from) = cursor.filter(|from| *from <= next && settled.is_none()) else {
            tx.commit().await?;
            note();
            return Ok(Changes { pairs: Vec::new(), all: true, cursor: next });
        };
        let stmt =
            tx.prepare_cached("SELECT DISTINCT mailbox, client FROM changes WHERE txid >= $1::text::xid8").await?;
        let mut changes = Changes { pairs: Vec::new(), all: false, cursor: next };
        for r in tx.query(&stmt, &[&from.to_string()]).await? {
            let (mailbox, client): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            // A TRUNCATE by hand writes an empty pair: everything goes.
            changes.all |= mailbox.is_empty();
            changes.pairs.push((mailbox, client));
        }
        tx.commit().await?;
        note();
        // Now and then, the log is trimmed of rows every reader has had ten minutes to see: those
        // of transactions older than the xmin noted at least that long ago (all of them had
        // ended by then). A cache that has not read the log for longer than it trusts itself
        // starts over from empty, so no reader needs them.
        if self.polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(TRIM_EVERY_POLLS) {
            let due = {
                let mut noted = self.trim.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match *noted {
                    Some((at, xmin)) if at.elapsed() >= TRIM_AFTER => {
                        *noted = Some((std::time::Instant::now(), next));
                        Some(xmin)
                    }
                    Some(_) => None,
                    None => {
                        *noted = Some((std::time::Instant::now(), next));
                        None
                    }
                }
            };
            if let Some(xmin) = due {
                // The read stands whether or not the trim succeeds; a failed one is tried again.
                let trimmed =
                    conn.execute("DELETE FROM changes WHERE txid < $1::text::xid8", &[&xmin.to_string()]).await;
                if let Err(e) = trimmed {
                    tracing::warn!(error = %StoreError::from(e), "cannot trim the change log; trying again later");
                    *self.trim.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some((std::time::Instant::now(), xmin));
                }
            }
        }
        Ok(changes)
    }

    /// Expiry is on the database's clock (the lease lasts `until - now`), so replicas whose
    /// clocks disagree still agree on when a lease ends.
    async fn lease_pair(
        &self,
        mailbox: &str,
        client: &str,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        let ttl = until.saturating_sub(now).max(0);
        let conn = self.pool.get().await?;
        let taken = conn
            .execute(
                "WITH clock AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now) \
                 INSERT INTO pair_leases (mailbox, client, holder, expires_at) \
                 SELECT $1, $2, $3, clock.now + $4 FROM clock \
                 ON CONFLICT (mailbox, client) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE pair_leases.expires_at <= EXCLUDED.expires_at - $4 OR pair_leases.holder = EXCLUDED.holder",
                &[&mailbox, &client, &holder, &ttl],
            )
            .await?;
        Ok(taken == 1)
    }

    /// An UPDATE only: a renewal that reaches the database after the release never takes the
    /// lease again.
    async fn renew_pair(
        &self,
        mailbox: &str,
        client: &str,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        let ttl = until.saturating_sub(now).max(0);
        let conn = self.pool.get().await?;
        let renewed = conn
            .execute(
                "UPDATE pair_leases SET expires_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $4 \
                 WHERE mailbox = $1 AND client = $2 AND holder = $3",
                &[&mailbox, &client, &holder, &ttl],
            )
            .await?;
        Ok(renewed == 1)
    }

    async fn release_pair(&self, mailbox: String, client: String, holder: String) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.execute(
            "DELETE FROM pair_leases WHERE mailbox = $1 AND client = $2 AND holder = $3",
            &[&mailbox, &client, &holder],
        )
        .await?;
        Ok(())
    }

    /// A free slot is one never taken or expired; two replicas racing for one settle on the
    /// primary key, and the loser finds all held (its caller asks again).
    async fn take_host_slot(
        &self,
        host: &str,
        cap: u32,
        holder: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        let (cap, ttl) = (i32::try_from(cap).unwrap_or(i32::MAX), until.saturating_sub(now).max(0));
        let conn = self.pool.get().await?;
        let taken = conn
            .execute(
                "WITH clock AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now), \
                 free AS (SELECT s FROM generate_series(0, $2::integer - 1) AS s, clock \
                          WHERE NOT EXISTS (SELECT 1 FROM host_slots h \
                                            WHERE h.host = $1 AND h.slot = s AND h.expires_at > clock.now) \
                          ORDER BY s LIMIT 1) \
                 INSERT INTO host_slots (host, slot, holder, expires_at) \
                 SELECT $1, free.s, $3, clock.now + $4 FROM free, clock \
                 ON CONFLICT (host, slot) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE host_slots.expires_at <= EXCLUDED.expires_at - $4",
                &[&host, &cap, &holder, &ttl],
            )
            .await?;
        Ok(taken == 1)
    }

    async fn release_host_slot(&self, host: String, holder: String) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.execute("DELETE FROM host_slots WHERE host = $1 AND holder = $2", &[&host, &holder]).await?;
        Ok(())
    }

    /// The bucket is created full; then one statement refills it for the time since its last
    /// use and takes a probe only if enough are left (concurrent takes serialise on the row).
    async fn take_probe(
        &self,
        mailbox: &str,
        now: Millis,
        bucket: Bucket,
    ) -> Result<Option<Result<(), std::time::Duration>>, StoreError> {
        let Bucket { burst, per_sec, keep } = bucket;
        let need = 1.0 + keep;
        let conn = self.pool.get().await?;
        // A replica whose clock runs ahead must not refill the shared bucket (nor date it into
        // the future for the others): its time counts at most a second past the database's,
        // and so does a time stored before (by a replica ahead, or before a failover).
        let ceiling: i64 = conn
            .query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 1000", &[])
            .await?
            .try_get(0)?;
        let now = now.min(ceiling);
        conn.execute(
            "INSERT INTO probe_budget (mailbox, tokens, updated_at) VALUES ($1, $2, $3) ON CONFLICT (mailbox) DO NOTHING",
            &[&mailbox, &burst, &now],
        )
        .await?;
        conn.execute(
            "UPDATE probe_budget SET updated_at = $2 WHERE mailbox = $1 AND updated_at > $2",
            &[&mailbox, &ceiling],
        )
        .await?;
        let row = conn
            .query_one(
                "WITH taken AS (UPDATE probe_budget SET \
                              tokens = least($2::float8, tokens + greatest(0, $3::bigint - updated_at) / 1000.0::float8 * $4::float8) - 1, \
                              updated_at = greatest(updated_at, $3::bigint) \
                           WHERE mailbox = $1 \
                             AND least($2::float8, tokens + greatest(0, $3::bigint - updated_at) / 1000.0::float8 * $4::float8) >= $5::float8 \
                           RETURNING 1) \
                 SELECT (SELECT count(*) FROM taken), \
                        coalesce((SELECT least($2::float8, tokens + greatest(0, $3::bigint - updated_at) / 1000.0::float8 * $4::float8) \
                                  FROM probe_budget WHERE mailbox = $1), $2::float8)",
                &[&mailbox, &burst, &now, &per_sec, &need],
            )
            .await?;
        let taken: i64 = row.try_get(0)?;
        if taken == 1 {
            return Ok(Some(Ok(())));
        }
        let tokens: f64 = row.try_get(1)?;
        if per_sec <= 0.0 || need > burst {
            return Ok(Some(Err(std::time::Duration::from_secs(3600))));
        }
        Ok(Some(Err(std::time::Duration::from_secs_f64(((need - tokens) / per_sec).ceil()))))
    }

    async fn get(&self, mailbox: &str, client: &str) -> Result<Arc<CredentialRow>, StoreError> {
        let conn = self.pool.get().await?;
        let stmt = conn.prepare_cached(&rows::get_sql()).await?;
        let row = conn.query_opt(&stmt, &[&mailbox, &client]).await?.ok_or(StoreError::NotFound)?;
        Ok(Arc::new(rows::read_row(&row)?))
    }

    async fn bind(
        &self,
        new: NewBinding,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        let (mailbox, client) = (new.mailbox.as_str(), new.client.as_str());
        match get_row(&tx, mailbox, client, true).await? {
            Some(row) if row.state == CredentialState::Active => return Err(StoreError::AlreadyExists),
            Some(_) => {
                tx.execute("DELETE FROM credentials WHERE mailbox = $1 AND client = $2", &[&mailbox, &client]).await?;
            }
            None => {}
        }
        insert_binding(&tx, &new).await?;
        insert_audit(&tx, &audit).await?;
        let row = get_row(&tx, mailbox, client, false).await?.ok_or(StoreError::NotFound)?;
        insert_request(&tx, request, &row).await?;
        self.finish(tx).await?;
        Ok(row)
    }

    async fn import(&self, rows: Vec<NewBinding>, audit: AuditEvent) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        for new in &rows {
            insert_binding(&tx, new).await?;
        }
        insert_audit(&tx, &audit).await?;
        self.finish(tx).await?;
        Ok(())
    }

    async fn rotate(
        &self,
        c: RotateChange,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let (mailbox, client) = (c.mailbox.clone(), c.client.clone());
        self.write(&mailbox, &client, request, move |tx, row| {
            Box::pin(async move {
                row.check_current(Some(c.from_version))?;
                let next = i64::try_from(c.from_version + 1).map_err(|_| StoreError::Conflict)?;
                let generation = c.code.generation.as_ref().map(|g| &g[..]);
                tx.execute(
                    "UPDATE credentials SET version = $3, key_id = $4, nonce = $5, ciphertext = $6, rotated_at = $7, \
                     last_verified_at = $7, last_probe_outcome = $8, generation = $9 WHERE mailbox = $1 AND client = $2",
                    &[
                        &c.mailbox,
                        &c.client,
                        &next,
                        &i64::from(c.code.key_id),
                        &&c.code.sealed.nonce[..],
                        &c.code.sealed.ciphertext,
                        &c.now,
                        &(ProbeOutcome::Accepted as i32),
                        &generation,
                    ],
                )
                .await?;
                insert_audit(tx, &audit).await
            })
        })
        .await
    }

    async fn revoke(
        &self,
        c: RevokeChange,
        audit: AuditEvent,
        request: Option<RequestRecord>,
    ) -> Result<CredentialRow, StoreError> {
        let (mailbox, client) = (c.mailbox.clone(), c.client.clone());
        self.write(&mailbox, &client, request, move |tx, row| {
            Box::pin(async move {
                row.check_current(None)?;
                tx.execute(
                    "UPDATE credentials SET state = 2, key_id = NULL, nonce = NULL, ciphertext = NULL, \
                     generation = NULL, revoked_at = $3, revoke_reason = $4 WHERE mailbox = $1 AND client = $2",
                    &[&c.mailbox, &c.client, &c.now, &c.reason],
                )
                .await?;
                insert_audit(tx, &audit).await
            })
        })
        .await
    }

    async fn find_request(&self, caller: String, request_id: String) -> Result<Option<StoredRequest>, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                "SELECT rpc, fingerprint, key_id, answer, mac, created_at FROM requests \
                 WHERE caller = $1 AND request_id = $2",
                &[&caller, &request_id],
            )
            .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(StoredRequest {
            rpc: r.try_get(0)?,
            fingerprint: r.try_get(1)?,
            key_id: u32::try_from(r.try_get::<_, i64>(2)?).unwrap_or(u32::MAX),
            answer: RecordedAnswer { bytes: r.try_get(3)?, mac: r.try_get(4)? },
            created_at: r.try_get(5)?,
        }))
    }

    async fn update_request_answer(&self, key: RequestKey, answer: RecordedAnswer) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.execute(
            "UPDATE requests SET answer = $5, mac = $6 \
             WHERE caller = $1 AND request_id = $2 AND rpc = $3 AND created_at = $4",
            &[&key.caller, &key.request_id, &key.rpc, &key.created_at, &answer.bytes, &answer.mac],
        )
        .await?;
        Ok(())
    }

    async fn record_probe(&self, p: ProbeRecord, audit: AuditEvent) -> Result<CredentialRow, StoreError> {
        let (mailbox, client) = (p.mailbox.clone(), p.client.clone());
        self.write(&mailbox, &client, None, move |tx, row| {
            Box::pin(async move {
                row.check_current(Some(p.version))?;
                tx.execute(
                    "UPDATE credentials SET last_verified_at = $3, last_probe_outcome = $4 \
                     WHERE mailbox = $1 AND client = $2",
                    &[&p.mailbox, &p.client, &p.now, &(p.outcome as i32)],
                )
                .await?;
                insert_audit(tx, &audit).await
            })
        })
        .await
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<CredentialRow>, StoreError> {
        let conn = self.pool.get().await?;
        let stmt = conn.prepare_cached(&rows::list_sql(&query)).await?;
        let values = rows::list_values(&query);
        let found = conn.query(&stmt, &refs(&values)).await?;
        rows::read_rows(&found)
    }

    async fn list_unused(&self, query: UnusedQuery) -> Result<Vec<CredentialRow>, StoreError> {
        let conn = self.pool.get().await?;
        let stmt = conn.prepare_cached(&rows::unused_sql(&query)).await?;
        let values = rows::unused_values(&query);
        let found = conn.query(&stmt, &refs(&values)).await?;
        rows::read_rows(&found)
    }

    async fn record_reveals(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut columns = RevealColumns::default();
        for e in &events {
            columns.push(e);
        }
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        let c = &columns;
        tx.execute(
            "INSERT INTO audit_events (at, caller, caller_role, rpc, mailbox, client, outcome, probe_outcome, count, \
             first_at) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::integer[], $9::bigint[], $10::bigint[])",
            &[&c.at, &c.caller, &c.role, &c.rpc, &c.mailbox, &c.client, &c.outcome, &c.probe, &c.count, &c.first_at],
        )
        .await?;
        // Rows are locked in key order, so two replicas flushing at once cannot deadlock; the
        // latest use wins whoever writes last.
        tx.execute(
            "WITH used AS (SELECT m, c, max(at) AS at FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(m, c, at) \
                           GROUP BY m, c), \
                  locked AS (SELECT cr.mailbox, cr.client, used.at FROM credentials cr \
                             JOIN used ON cr.mailbox = used.m AND cr.client = used.c \
                             ORDER BY cr.mailbox, cr.client FOR UPDATE OF cr) \
             UPDATE credentials SET last_used_at = GREATEST(coalesce(credentials.last_used_at, 0), locked.at) \
             FROM locked WHERE credentials.mailbox = locked.mailbox AND credentials.client = locked.client",
            &[&c.mailbox, &c.client, &c.at],
        )
        .await?;
        // After a lost COMMIT, asked whether it was made: written twice, the batch's Reveals
        // would count twice. Put back unless it was.
        self.finish(tx).await
    }

    async fn count_by_state(&self) -> Result<(u64, u64), StoreError> {
        let conn = self.pool.get().await?;
        let r = conn.query_one(rows::COUNT_BY_STATE, &[]).await?;
        let (a, v): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
        Ok((a.try_into().unwrap_or(0), v.try_into().unwrap_or(0)))
    }

    async fn count_by_outcome(&self) -> Result<Vec<(Option<ProbeOutcome>, u64)>, StoreError> {
        let conn = self.pool.get().await?;
        let mut out = Vec::new();
        for r in conn.query(rows::COUNT_BY_OUTCOME, &[]).await? {
            out.push((rows::outcome_from(r.try_get(0)?), r.try_get::<_, i64>(1)?.try_into().unwrap_or(0)));
        }
        Ok(out)
    }

    async fn due_for_verification(
        &self,
        before: Millis,
        after: Option<DuePosition>,
        limit: usize,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let conn = self.pool.get().await?;
        let stmt = conn.prepare_cached(&rows::due_sql()).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (k, m, c) = after.unwrap_or((i64::MIN, String::new(), String::new()));
        rows::read_rows(&conn.query(&stmt, &[&before, &k, &m, &c, &limit]).await?)
    }

    async fn sealed_before(&self, active: KeyId, limit: usize) -> Result<Vec<CredentialRow>, StoreError> {
        let conn = self.pool.get().await?;
        let stmt = conn.prepare_cached(&rows::sealed_before_sql()).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        rows::read_rows(&conn.query(&stmt, &[&i64::from(active), &limit]).await?)
    }

    async fn reseal(&self, batch: Vec<Reseal>) -> Result<usize, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        let stmt = tx
            .prepare_cached(
                "UPDATE credentials SET key_id = $1, nonce = $2, ciphertext = $3, generation = $4 \
                 WHERE mailbox = $5 AND client = $6 AND state = 1 AND version = $7 AND key_id = $8 AND ciphertext = $9",
            )
            .await?;
        let mut done = 0;
        for r in &batch {
            let generation = r.code.generation.as_ref().map(|g| &g[..]);
            done += tx
                .execute(
                    &stmt,
                    &[
                        &i64::from(r.code.key_id),
                        &&r.code.sealed.nonce[..],
                        &r.code.sealed.ciphertext,
                        &generation,
                        &r.mailbox,
                        &r.client,
                        &to_i64(r.version),
                        &i64::from(r.old_key_id),
                        &r.old_ciphertext,
                    ],
                )
                .await?;
        }
        self.finish(tx).await?;
        Ok(usize::try_from(done).unwrap_or(usize::MAX))
    }
}

/// Aggregated Reveal events as columns, for one `unnest` insert.
#[derive(Default)]
struct RevealColumns {
    at: Vec<i64>,
    caller: Vec<String>,
    role: Vec<String>,
    rpc: Vec<String>,
    mailbox: Vec<String>,
    client: Vec<String>,
    outcome: Vec<String>,
    probe: Vec<Option<i32>>,
    count: Vec<i64>,
    first_at: Vec<i64>,
}

impl RevealColumns {
    fn push(&mut self, e: &AuditEvent) {
        self.at.push(e.at);
        self.caller.push(e.caller.clone());
        self.role.push(e.caller_role.clone());
        self.rpc.push(e.rpc.clone());
        self.mailbox.push(e.mailbox.clone());
        self.client.push(e.client.clone());
        self.outcome.push(e.outcome.clone());
        self.probe.push(e.probe_outcome.map(|o| o as i32));
        self.count.push(to_i64(e.count));
        self.first_at.push(e.first_at);
    }
}

#[tonic::async_trait]
impl AuditStore for PgStore {
    async fn audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        // A transaction, so that a lost answer can be asked about.
        let tx = conn.transaction().await?;
        let stmt = tx.prepare_cached(INSERT_AUDIT).await?;
        let values = audit_values(&event);
        tx.execute(&stmt, &refs(&values)).await?;
        self.finish(tx).await
    }

    async fn audit_events(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.pool.get().await?;
        let stmt = conn.prepare_cached(rows::audit_page_sql(&query)).await?;
        let values = rows::audit_page_values(&query);
        let found = conn.query(&stmt, &refs(&values)).await?;
        found.iter().map(rows::read_audit).collect()
    }
}

fn token_row(r: &tokio_postgres::Row) -> Result<TokenRow, UnreadableToken> {
    let id: String = r.try_get(0).unwrap_or_else(|_| "(no id)".into());
    let id: String = id.chars().filter(|c| !c.is_control()).take(64).collect();
    let unreadable = |column: &str, e: &dyn std::fmt::Display| UnreadableToken {
        id: id.clone(),
        reason: format!("column {column} cannot be read: {e}"),
    };
    let key_id: i64 = r.try_get(3).map_err(|e| unreadable("key_id", &e))?;
    Ok(TokenRow {
        id: r.try_get(0).map_err(|e| unreadable("id", &e))?,
        role: r.try_get(1).map_err(|e| unreadable("role", &e))?,
        digest: r.try_get(2).map_err(|e| unreadable("digest", &e))?,
        key_id: u32::try_from(key_id).map_err(|_| unreadable("key_id", &format_args!("{key_id} is out of range")))?,
        mac: r.try_get(4).map_err(|e| unreadable("mac", &e))?,
        created_at: r.try_get(5).map_err(|e| unreadable("created_at", &e))?,
        last_used_at: r.try_get(6).map_err(|e| unreadable("last_used_at", &e))?,
        revoked_at: r.try_get(7).map_err(|e| unreadable("revoked_at", &e))?,
    })
}

#[tonic::async_trait]
impl TokenStore for PgStore {
    async fn insert_token(&self, t: TokenRow) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        // A transaction, so that a lost answer can be asked about.
        let tx = conn.transaction().await?;
        tx.execute(
            "INSERT INTO tokens (id, role, digest, key_id, mac, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&t.id, &t.role, &t.digest, &i64::from(t.key_id), &t.mac, &t.created_at],
        )
        .await?;
        self.finish(tx).await
    }

    async fn tokens(&self) -> Result<Vec<Result<TokenRow, UnreadableToken>>, StoreError> {
        let conn = self.pool.get().await?;
        let stmt = conn
            .prepare_cached(
                "SELECT id, role, digest, key_id, mac, created_at, last_used_at, revoked_at FROM tokens \
                 ORDER BY created_at, id",
            )
            .await?;
        Ok(conn.query(&stmt, &[]).await?.iter().map(token_row).collect())
    }

    async fn revoke_token(&self, id: String, now: Millis) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        let revoked = tx.query_opt("SELECT revoked_at FROM tokens WHERE id = $1 FOR UPDATE", &[&id]).await?;
        match revoked.map(|r| r.try_get::<_, Option<i64>>(0)).transpose()? {
            None => return Err(StoreError::NotFound),
            Some(Some(_)) => return Err(StoreError::Revoked),
            Some(None) => {}
        }
        tx.execute("UPDATE tokens SET revoked_at = $2, mac = ''::bytea WHERE id = $1", &[&id, &now]).await?;
        self.finish(tx).await?;
        Ok(())
    }

    async fn record_token_use(&self, uses: Vec<(String, Millis)>) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let (ids, ats): (Vec<String>, Vec<i64>) = uses.into_iter().unzip();
        let conn = self.pool.get().await?;
        conn.execute(
            "UPDATE tokens SET last_used_at = GREATEST(coalesce(tokens.last_used_at, 0), u.at) \
             FROM (SELECT id, max(at) AS at FROM unnest($1::text[], $2::bigint[]) AS x(id, at) GROUP BY id) u \
             WHERE tokens.id = u.id",
            &[&ids, &ats],
        )
        .await?;
        Ok(())
    }

    async fn rekey_tokens(&self, batch: Vec<TokenRekey>) -> Result<usize, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        let stmt = tx
            .prepare_cached("UPDATE tokens SET key_id = $1, mac = $2 WHERE id = $3 AND key_id = $4 AND mac = $5")
            .await?;
        let mut done = 0;
        for t in &batch {
            done +=
                tx.execute(&stmt, &[&i64::from(t.key_id), &t.mac, &t.id, &i64::from(t.old_key_id), &t.old_mac]).await?;
        }
        self.finish(tx).await?;
        Ok(usize::try_from(done).unwrap_or(usize::MAX))
    }
}

//! The PostgreSQL store, for several stateless replicas on one database: a pool of connections
//! (tokio-postgres under deadpool), every write one transaction with its audit event. Replicas
//! share everything here; what each keeps in memory is invalidated from the `changes` table
//! (see [`PgStore::changes_since`]).

mod error;
mod guards;
mod import;
mod migrate;
mod rows;
mod store;
#[cfg(test)]
pub(crate) mod testdb;

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use import::{Batch, Moved};

use super::{Millis, StoreError, UnlockMaterial};
use crate::crypto::{KdfParams, Salt, Sealed, WrappedKey};

/// Connections per replica at most.
const POOL_SIZE: usize = 16;
/// How long a call waits for a pooled connection, and a new connection for the server.
const WAIT: Duration = Duration::from_secs(5);

/// The PostgreSQL engine.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// How to open a connection outside the pool: a lost COMMIT is asked about on one, so the
    /// check never waits for (or starves) the pool when every pooled connection broke at once.
    direct: Arc<(tokio_postgres::Config, MakeRustlsConnect)>,
    /// What a log line may say of the database: host, port and name, never the password.
    describe: Arc<str>,
    /// Reads of the change log so far (it is trimmed every few hundred).
    polls: Arc<std::sync::atomic::AtomicU64>,
    /// When an xmin was noted for the next trim, and which.
    trim: Arc<std::sync::Mutex<Option<(std::time::Instant, u64)>>>,
    /// What the reads of the change log saw of its catalog (see [`guards`]).
    guarded: Arc<std::sync::Mutex<store::Guarded>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("database", &self.describe).finish_non_exhaustive()
    }
}

/// TLS to the database: public (webpki) roots plus every certificate in `ca_file`. The server's
/// certificate and host name are always verified; whether TLS is used is the URL's `sslmode`.
fn tls(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let bad = |what: String| StoreError::Unavailable(what);
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(format!("cannot read database CA file {}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("database CA file {} is not valid PEM: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(bad(format!("database CA file {} holds no certificate", path.display())));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(format!("database CA file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Parses a `postgres://` URL; the error never repeats the URL (it may hold a password).
fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("the database URL cannot be read: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(WAIT);
    }
    // `prefer` (the driver's default) falls back to plaintext when the server (or anyone on the
    // path) declines TLS: off loopback, only `sslmode=require` is accepted. The driver connects
    // to `hostaddr` when one is given, whatever the host says.
    let loopback = config.get_hostaddrs().iter().all(std::net::IpAddr::is_loopback)
        && config.get_hosts().iter().all(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            tokio_postgres::config::Host::Unix(_) => true,
        });
    if !loopback && config.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
        return Err(StoreError::Unavailable(
            "the database is not on loopback: add sslmode=require to the URL (TLS, certificate verified)".into(),
        ));
    }
    // The pid tells replicas apart in pg_stat_activity.
    config.application_name(format!("vault-server/{}", std::process::id()));
    Ok(config)
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

fn blob_array<const N: usize>(v: Vec<u8>, what: &str) -> Result<[u8; N], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt(format!("{what} has the wrong length")))
}

/// Inserts the unlock material in `tx`; `AlreadyExists` if there is one.
async fn create_in(
    tx: &deadpool_postgres::Transaction<'_>,
    material: &UnlockMaterial,
    now: Millis,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO vault_meta (id, kdf_salt, kdf_m_kib, kdf_t, kdf_p, created_at) VALUES (1, $1, $2, $3, $4, $5)",
        &[
            &&material.salt.0[..],
            &i64::from(material.params.m_kib),
            &i64::from(material.params.t),
            &i64::from(material.params.p),
            &now,
        ],
    )
    .await?;
    for k in &material.keys {
        tx.execute(
            "INSERT INTO keyring (key_id, nonce, wrapped_dek, created_at) VALUES ($1, $2, $3, $4)",
            &[&i64::from(k.key_id), &&k.sealed.nonce[..], &k.sealed.ciphertext, &now],
        )
        .await?;
    }
    Ok(())
}

impl PgStore {
    /// Connects (checking the server answers) and applies pending migrations.
    pub async fn connect(url: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let config = parse_url(url)?;
        let describe: Arc<str> = describe(&config).into();
        let tls = tls(ca_file)?;
        let direct = Arc::new((config.clone(), tls.clone()));
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        let store =
            Self { pool, direct, describe, polls: Arc::default(), trim: Arc::default(), guarded: Arc::default() };
        let mut client = store.pool.get().await?;
        migrate::apply(&mut client).await?;
        Ok(store)
    }

    /// Refuses a database whose change log is not as the migrations made it, or with someone
    /// else's trigger or rule on a vault table (`serve` checks this before it serves).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        guards::check(&guards::read(&**client).await?, guards::Scope::Everything)
    }

    /// Host, port and database name (no password), for log lines.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Stores the unlock material of a new vault; `AlreadyExists` if the database holds one.
    pub async fn create(&self, material: &UnlockMaterial, now: Millis) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        create_in(&tx, material, now).await?;
        self.finish(tx).await
    }

    async fn read_unlock_material(&self) -> Result<UnlockMaterial, StoreError> {
        let client = self.pool.get().await?;
        let meta = client
            .query_opt("SELECT kdf_salt, kdf_m_kib, kdf_t, kdf_p FROM vault_meta WHERE id = 1", &[])
            .await?
            .ok_or(StoreError::NotInitialised)?;
        let param = |i: usize| -> Result<u32, StoreError> {
            let v: i64 = meta.try_get(i)?;
            u32::try_from(v).map_err(|_| StoreError::Corrupt("a KDF parameter is out of range".into()))
        };
        let params = KdfParams { m_kib: param(1)?, t: param(2)?, p: param(3)? };
        let salt = Salt(blob_array(meta.try_get(0)?, "the KDF salt")?);
        let mut keys = Vec::new();
        for r in client.query("SELECT key_id, nonce, wrapped_dek FROM keyring ORDER BY key_id", &[]).await? {
            let key_id = u32::try_from(r.try_get::<_, i64>(0)?)
                .map_err(|_| StoreError::Corrupt("a key id is out of range".into()))?;
            let nonce = blob_array(r.try_get(1)?, "a keyring nonce")?;
            keys.push(WrappedKey { key_id, sealed: Sealed { nonce, ciphertext: r.try_get(2)? } });
        }
        Ok(UnlockMaterial { salt, params, keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Bucket, CredentialStore as _};

    /// A store on a fresh database holding a vault.
    async fn fresh() -> (PgStore, crate::crypto::Keyring) {
        let url = testdb::fresh_database().await;
        let (ring, material) = crate::store::contract::keyring();
        let store = PgStore::connect(&url, None).await.unwrap();
        store.create(&material, 0).await.unwrap();
        (store, ring)
    }

    /// A connection to a fresh vault database that plans prepared statements generically (as a
    /// pooled connection may after a few runs) and avoids sequential scans where it can.
    async fn generic_planner() -> tokio_postgres::Client {
        let url = testdb::fresh_database().await;
        let store = PgStore::connect(&url, None).await.unwrap();
        store.create(&crate::store::contract::keyring().1, 0).await.unwrap();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off").await.unwrap();
        client
    }

    /// The generic plan of `sql` prepared as `name` with parameter `types`, run with `args`.
    async fn generic_plan(client: &tokio_postgres::Client, name: &str, types: &str, sql: &str, args: &str) -> String {
        client.batch_execute(&format!("PREPARE {name} ({types}) AS {sql}")).await.unwrap();
        let plan: Vec<String> = client
            .simple_query(&format!("EXPLAIN EXECUTE {name} ({args})"))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        plan.join("\n")
    }

    fn arg(v: Option<&String>) -> String {
        v.map_or("NULL".to_owned(), |v| format!("'{v}'"))
    }

    /// A prepared statement may run on a generic plan, where `$N IS NULL OR ...` is no index
    /// condition: a page by pair or caller must still read that filter's index.
    #[tokio::test]
    async fn an_audit_page_by_pair_or_caller_reads_its_index_in_a_generic_plan() {
        let client = generic_planner().await;
        let query = |mailbox: Option<&str>, client: Option<&str>, caller: Option<&str>| crate::store::AuditQuery {
            mailbox: mailbox.map(str::to_owned),
            client: client.map(str::to_owned),
            caller: caller.map(str::to_owned),
            limit: 10,
            ..Default::default()
        };
        for (i, (q, index)) in [
            (query(Some("a@sina.com"), Some("x"), None), "audit_events_by_pair"),
            (query(Some("a@sina.com"), Some("x"), Some("t")), "audit_events_by_pair"),
            (query(None, None, Some("t")), "audit_events_by_caller"),
            (query(None, None, None), "audit_events_by_time"),
        ]
        .into_iter()
        .enumerate()
        {
            let types = "bigint, text, text, text, bigint, bigint, bigint, bigint";
            let args = format!(
                "1, {}, {}, {}, NULL, NULL, 10, 1",
                arg(q.mailbox.as_ref()),
                arg(q.client.as_ref()),
                arg(q.caller.as_ref())
            );
            let plan = generic_plan(&client, &format!("audit{i}"), types, rows::audit_page_sql(&q), &args).await;
            for name in ["audit_events_by_pair", "audit_events_by_caller", "audit_events_by_time"] {
                assert_eq!(plan.contains(name), name == index, "{q:?} ({name}):\n{plan}");
            }
        }
    }

    #[tokio::test]
    async fn a_list_page_by_mailbox_or_client_reads_its_key_or_index_in_a_generic_plan() {
        let client = generic_planner().await;
        let (m, c) = (Some("a@sina.com".to_owned()), Some("x".to_owned()));
        for (i, (q, index, cond)) in [
            (crate::store::ListQuery { mailbox: m, ..Default::default() }, "credentials_pkey", "mailbox = $1"),
            (crate::store::ListQuery { client: c, ..Default::default() }, "credentials_by_client", "client = $2"),
        ]
        .into_iter()
        .enumerate()
        {
            let types = "text, text, boolean, text, text, bigint, integer, bigint";
            let args =
                format!("{}, {}, false, '', '', 10, NULL, NULL", arg(q.mailbox.as_ref()), arg(q.client.as_ref()));
            let plan = generic_plan(&client, &format!("list{i}"), types, &rows::list_sql(&q), &args).await;
            let scan = plan.lines().find(|l| l.contains("Index Scan")).unwrap_or_default();
            let condition = plan.lines().find(|l| l.trim_start().starts_with("Index Cond:")).unwrap_or_default();
            assert!(scan.contains(index) && condition.contains(cond), "{q:?}:\n{plan}");
            assert!(!plan.contains("Sort"), "the ORDER BY must come from the key or index: {q:?}:\n{plan}");
        }
    }

    #[tokio::test]
    async fn a_review_page_for_one_mailbox_reads_its_key_in_a_generic_plan() {
        let client = generic_planner().await;
        // Statistics of a real vault: many mailboxes, so one mailbox is a few rows.
        client
            .batch_execute(
                "INSERT INTO credentials (mailbox, client, provider, state, version, key_id, nonce, ciphertext, created_at) \
                 SELECT 'm' || i || '@sina.com', 'sender', 'sina', 1, 1, (SELECT min(key_id) FROM keyring), '\\x00', '\\x00', i \
                 FROM generate_series(1, 20000) AS i; ANALYZE credentials",
            )
            .await
            .unwrap();
        let q = crate::store::UnusedQuery { cutoff: 1, mailbox: Some("a@sina.com".to_owned()), after: None, limit: 10 };
        let types = "bigint, text, bigint, text, text, bigint";
        let plan =
            generic_plan(&client, "unused", types, &rows::unused_sql(&q), "1, 'a@sina.com', 0, '', '', 10").await;
        let condition = plan.lines().find(|l| l.trim_start().starts_with("Index Cond:")).unwrap_or_default();
        assert!(plan.contains("credentials_pkey") && condition.contains("mailbox = $2"), "{plan}");
        // Every mailbox: a later page starts at its cursor in credentials_unused.
        let q = crate::store::UnusedQuery { mailbox: None, ..q };
        let plan = generic_plan(
            &client,
            "unused_all",
            types,
            &rows::unused_sql(&q),
            "5000, NULL, 10, 'm10@sina.com', 'sender', 10",
        )
        .await;
        let condition = plan.lines().find(|l| l.trim_start().starts_with("Index Cond:")).unwrap_or_default();
        assert!(plan.contains("credentials_unused") && condition.contains("> ROW($3, $4, $5)"), "{plan}");
    }

    #[tokio::test]
    async fn the_sweeps_page_starts_where_the_last_one_stopped_in_a_generic_plan() {
        let client = generic_planner().await;
        let types = "bigint, bigint, text, text, bigint";
        let plan = generic_plan(&client, "due", types, &rows::due_sql(), "10, 5, 'a@sina.com', 'x', 64").await;
        let condition = plan.lines().find(|l| l.trim_start().starts_with("Index Cond:")).unwrap_or_default();
        assert!(plan.contains("credentials_by_verification"), "{plan}");
        assert!(condition.contains("ROW(") && condition.contains("> ROW($2, $3, $4)"), "{plan}");
        assert!(!plan.contains("Sort"), "the ORDER BY must come from the index:\n{plan}");
    }

    #[tokio::test]
    async fn a_lease_is_one_holders_until_released_or_expired_on_the_database_clock() {
        let (store, _) = fresh().await;
        let lease = |holder: &'static str, ttl: i64| {
            let store = store.clone();
            // The replica's own clock is far off: only the difference counts.
            async move { store.lease_pair("a@sina.com", "x", holder, 5_000_000, 5_000_000 + ttl).await.unwrap() }
        };
        assert!(lease("a", 60_000).await);
        assert!(!lease("b", 60_000).await, "taken while held");
        assert!(lease("a", 60_000).await, "its holder may take it again");
        store.release_pair("a@sina.com".into(), "x".into(), "b".into()).await.unwrap();
        assert!(!lease("b", 60_000).await, "another holder's release gives nothing back");
        store.release_pair("a@sina.com".into(), "x".into(), "a".into()).await.unwrap();
        assert!(lease("b", 0).await, "free once released");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(lease("c", 60_000).await, "an expired lease is taken over");
        assert!(store.lease_pair("a@sina.com", "y", "b", 0, 60_000).await.unwrap(), "other pairs are free");
        // Renewed by its holder only, and never taken again once given back.
        assert!(store.lease_pair("a@sina.com", "z", "a", 0, 0).await.unwrap());
        assert!(store.renew_pair("a@sina.com", "z", "a", 0, 60_000).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(!store.lease_pair("a@sina.com", "z", "d", 0, 60_000).await.unwrap(), "the renewal did not hold");
        assert!(!store.renew_pair("a@sina.com", "z", "d", 0, 60_000).await.unwrap(), "renewed by another");
        store.release_pair("a@sina.com".into(), "z".into(), "a".into()).await.unwrap();
        assert!(!store.renew_pair("a@sina.com", "z", "a", 0, 60_000).await.unwrap(), "renewed once given back");
        assert!(store.lease_pair("a@sina.com", "z", "d", 0, 60_000).await.unwrap(), "a renewal took it again");
    }

    #[tokio::test]
    async fn a_budget_dated_ahead_before_is_brought_back_to_the_database_clock() {
        let url = testdb::fresh_database().await;
        let (_, material) = crate::store::contract::keyring();
        let store = PgStore::connect(&url, None).await.unwrap();
        store.create(&material, 0).await.unwrap();
        let now = i64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
        let fast = Bucket { burst: 3.0, per_sec: 100.0, keep: 0.0 };
        assert!(matches!(store.take_probe("d@sina.com", now, fast).await.unwrap(), Some(Ok(()))));
        // Emptied and dated an hour ahead, as a replica whose clock ran ahead left it.
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let ahead = now + 3_600_000;
        client.execute("UPDATE probe_budget SET tokens = 0, updated_at = $1", &[&ahead]).await.unwrap();
        let _ = store.take_probe("d@sina.com", now, fast).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let later = now + 1500;
        // At 100 a second, refilled within the second past the database's clock, not in an hour.
        assert!(matches!(store.take_probe("d@sina.com", later, fast).await.unwrap(), Some(Ok(()))), "no refill");
    }

    #[tokio::test]
    async fn a_hosts_probe_slots_are_its_cap_across_holders_until_given_back_or_expired() {
        let (store, _) = fresh().await;
        let take = |holder: &'static str, ttl: i64| {
            let store = store.clone();
            async move { store.take_host_slot("imap.sina.com", 2, holder, 0, ttl).await.unwrap() }
        };
        assert!(take("a", 60_000).await && take("b", 60_000).await);
        assert!(!take("c", 60_000).await, "a third probe at once on a cap of 2");
        assert!(store.take_host_slot("imap.qq.com", 2, "c", 0, 60_000).await.unwrap(), "another host has its own");
        store.release_host_slot("imap.sina.com".into(), "a".into()).await.unwrap();
        assert!(take("c", 0).await, "a slot given back is free");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(take("d", 60_000).await, "an expired slot is taken over");
        assert!(!take("e", 60_000).await);
        let racers = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(
                async move { store.take_host_slot("smtp.sina.com", 3, &format!("r{i}"), 0, 60_000).await.unwrap() },
            )
        });
        let mut granted = 0;
        for r in racers {
            granted += usize::from(r.await.unwrap());
        }
        assert!((1..=3).contains(&granted), "{granted} of a cap of 3 at once");
    }

    #[tokio::test]
    async fn the_shared_budget_gives_exactly_its_burst_to_concurrent_takes() {
        let (store, _) = fresh().await;
        let bucket = Bucket { burst: 3.0, per_sec: 0.0, keep: 0.0 };
        let takes = (0..10).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_probe("a@sina.com", 1_000, bucket).await.unwrap() })
        });
        let mut granted = 0;
        for take in takes {
            match take.await.unwrap() {
                Some(Ok(())) => granted += 1,
                Some(Err(wait)) => assert_eq!(wait, std::time::Duration::from_secs(3600)),
                None => panic!("PostgreSQL's budget is shared"),
            }
        }
        assert_eq!(granted, 3);
        let refill = Bucket { burst: 3.0, per_sec: 1.0, keep: 0.0 };
        assert!(matches!(store.take_probe("a@sina.com", 1_000, refill).await.unwrap(), Some(Err(_))));
        assert!(matches!(store.take_probe("a@sina.com", 2_100, refill).await.unwrap(), Some(Ok(()))), "refilled");
        // A replica whose clock is an hour ahead refills nothing beyond a second.
        let now = i64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
        // Refills a probe in 5 s: the second the clock may run ahead, and this test's own time
        // (well under 4 s), refill less than one.
        let slow = Bucket { burst: 3.0, per_sec: 0.2, keep: 0.0 };
        for _ in 0..3 {
            assert!(matches!(store.take_probe("c@sina.com", now, slow).await.unwrap(), Some(Ok(()))));
        }
        let ahead = store.take_probe("c@sina.com", now + 3_600_000, slow).await.unwrap();
        assert!(matches!(ahead, Some(Err(_))), "a clock set ahead refilled the shared budget");
        assert!(matches!(store.take_probe("c@sina.com", now, slow).await.unwrap(), Some(Err(_))), "nor dated it ahead");
        let keep = Bucket { burst: 3.0, per_sec: 0.0, keep: 1.0 };
        assert!(matches!(store.take_probe("b@sina.com", 0, keep).await.unwrap(), Some(Ok(()))));
        assert!(matches!(store.take_probe("b@sina.com", 0, keep).await.unwrap(), Some(Ok(()))));
        assert!(matches!(store.take_probe("b@sina.com", 0, keep).await.unwrap(), Some(Err(_))), "keeps one");
    }

    #[tokio::test]
    async fn a_catalog_rewrite_drops_every_read_until_the_writers_open_then_have_ended() {
        let (store, _ring) = fresh().await;
        let first = store.changes_since(None).await.unwrap();
        let steady = store.changes_since(Some(first.cursor)).await.unwrap();
        assert!(!steady.all, "nothing changed");
        // A writer of credentials still open (as one under a function since put back would be)
        // when the catalog is rewritten: ALTER FUNCTION takes no lock on the table.
        let writer = store.pool.get().await.unwrap();
        writer.batch_execute("BEGIN; UPDATE credentials SET last_used_at = 1 WHERE false").await.unwrap();
        let admin = store.pool.get().await.unwrap();
        admin
            .batch_execute(
                "DO $$ BEGIN EXECUTE format('ALTER FUNCTION vault_note_truncate() SET search_path = %I, pg_temp', \
                 current_schema()); END $$",
            )
            .await
            .unwrap();
        let seen = store.changes_since(Some(steady.cursor)).await.unwrap();
        assert!(seen.all, "a rewrite drops the cache");
        let again = store.changes_since(Some(seen.cursor)).await.unwrap();
        assert!(again.all, "a writer open at the rewrite may still commit unlogged");
        writer.batch_execute("COMMIT").await.unwrap();
        let last = store.changes_since(Some(again.cursor)).await.unwrap();
        assert!(last.all, "the read that finds them ended drops it once more");
        assert!(!store.changes_since(Some(last.cursor)).await.unwrap().all, "then the log is followed again");
    }

    #[tokio::test]
    async fn the_change_log_names_changed_pairs_and_starts_over_when_it_cannot_follow() {
        let (store, ring) = fresh().await;
        let first = store.changes_since(None).await.unwrap();
        assert!(first.all, "the first read drops everything");
        let (key_id, generation, sealed) = ring.seal_code("a@sina.com", "x", 1, b"code");
        let new = crate::store::NewBinding {
            mailbox: crate::ids::Mailbox::parse("a@sina.com").unwrap(),
            client: crate::ids::ClientId::parse("x").unwrap(),
            provider: "sina".into(),
            code: crate::store::StoredCode { key_id, generation: Some(generation), sealed },
            now: 1,
            probe_outcome: crate::outcome::ProbeOutcome::Accepted,
        };
        let event = crate::store::contract::event("Bind", "a@sina.com", "x", 1);
        store.bind(new, event.clone(), None).await.unwrap();
        let changed = store.changes_since(Some(first.cursor)).await.unwrap();
        assert!(!changed.all);
        assert_eq!(changed.pairs, [("a@sina.com".to_owned(), "x".to_owned())]);
        // A Reveal's usage is no change a cache must drop: it writes nothing to the log. (The
        // log is counted: a read re-lists changes of transactions other tests of this cluster
        // keep open, by design.)
        let conn = store.pool.get().await.unwrap();
        let logged = async || -> i64 { conn.query_one("SELECT count(*) FROM changes", &[]).await.unwrap().get(0) };
        let before = logged().await;
        let mut late = event.clone();
        late.at = 7;
        store.record_reveals(vec![late]).await.unwrap();
        // Another replica's flush of an older use comes in last: the latest use stays.
        store.record_reveals(vec![event]).await.unwrap();
        assert_eq!(store.get("a@sina.com", "x").await.unwrap().last_used_at, Some(7));
        assert_eq!(logged().await, before, "a usage flush was logged as a change");
        // A cursor the database has not reached (restored elsewhere): start over.
        assert!(store.changes_since(Some(u64::MAX)).await.unwrap().all);
        // A TRUNCATE by hand empties every cache.
        let cursor = store.changes_since(Some(changed.cursor)).await.unwrap().cursor;
        conn.batch_execute("TRUNCATE credentials").await.unwrap();
        assert!(store.changes_since(Some(cursor)).await.unwrap().all);
    }

    #[test]
    fn a_database_off_loopback_needs_tls_required_and_errors_never_repeat_the_url() {
        for url in [
            "postgres://vault:s3cretpw@db.example:5432/vault",
            "postgres://vault:s3cretpw@10.0.0.5/v?sslmode=prefer",
            // The driver connects to hostaddr, not to the host named.
            "postgres://vault:s3cretpw@localhost/vault?hostaddr=192.0.2.10",
            "postgres://vault:s3cretpw@/vault?hostaddr=192.0.2.10",
        ] {
            let err = parse_url(url).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("sslmode=require") && !err.contains("s3cretpw"), "{err}");
        }
        for url in [
            "postgres://vault:s3cretpw@db.example:5432/vault?sslmode=require",
            "postgres://vault:s3cretpw@127.0.0.1:5432/vault",
            "postgres://vault:s3cretpw@localhost/vault",
            "postgres://vault:s3cretpw@localhost/vault?hostaddr=127.0.0.1",
        ] {
            assert!(parse_url(url).is_ok(), "{url}");
        }
        let err = parse_url("postgres://vault:s3cretpw@db/x?sslmode=bogus").map(|_| ()).unwrap_err().to_string();
        assert!(!err.contains("s3cretpw"), "{err}");
    }
}

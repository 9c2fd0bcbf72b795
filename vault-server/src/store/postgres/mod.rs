//! The PostgreSQL store, for several stateless replicas on one database: a pool of connections
//! (tokio-postgres under deadpool), every write one transaction with its audit event. Replicas
//! share everything here; what each keeps in memory is invalidated from the `changes` table
//! (see [`PgStore::changes_since`]).

mod error;
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
    /// What a log line may say of the database: host, port and name, never the password.
    describe: Arc<str>,
    /// Reads of the change log so far (it is trimmed every few hundred).
    polls: Arc<std::sync::atomic::AtomicU64>,
    /// When an xmin was noted for the next trim, and which.
    trim: Arc<std::sync::Mutex<Option<(std::time::Instant, u64)>>>,
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
    // path) declines TLS: off loopback, only `sslmode=require` is accepted.
    let loopback = config.get_hosts().iter().all(|h| match h {
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

impl PgStore {
    /// Connects (checking the server answers) and applies pending migrations.
    pub async fn connect(url: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let config = parse_url(url)?;
        let describe: Arc<str> = describe(&config).into();
        let manager =
            Manager::from_config(config, tls(ca_file)?, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        let store = Self { pool, describe, polls: Arc::default(), trim: Arc::default() };
        let mut client = store.pool.get().await?;
        migrate::apply(&mut client).await?;
        Ok(store)
    }

    /// Host, port and database name (no password), for log lines.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Stores the unlock material of a new vault; `AlreadyExists` if the database holds one.
    pub async fn create(&self, material: &UnlockMaterial, now: Millis) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
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
        tx.commit().await?;
        Ok(())
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

    #[test]
    fn a_database_off_loopback_needs_tls_required_and_errors_never_repeat_the_url() {
        for url in
            ["postgres://vault:s3cretpw@db.example:5432/vault", "postgres://vault:s3cretpw@10.0.0.5/v?sslmode=prefer"]
        {
            let err = parse_url(url).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("sslmode=require") && !err.contains("s3cretpw"), "{err}");
        }
        for url in [
            "postgres://vault:s3cretpw@db.example:5432/vault?sslmode=require",
            "postgres://vault:s3cretpw@127.0.0.1:5432/vault",
            "postgres://vault:s3cretpw@localhost/vault",
        ] {
            assert!(parse_url(url).is_ok(), "{url}");
        }
        let err = parse_url("postgres://vault:s3cretpw@db/x?sslmode=bogus").map(|_| ()).unwrap_err().to_string();
        assert!(!err.contains("s3cretpw"), "{err}");
    }
}

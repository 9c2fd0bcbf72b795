//! `serve`: unlock, wire the vault together, listen until SIGTERM/SIGINT.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rand::RngCore as _;
use tokio::net::TcpListener;

use super::database::{Database, unlock_postgres};
use super::{RunError, now, read_passphrase};
use crate::auth::{Role, Tokens};
use crate::cli::{PassphraseArgs, ServeArgs};
use crate::crypto::LiveKeyring;
use crate::crypto::{Kek, Keyring};
use crate::datadir;
use crate::metrics::{Metrics, MetricsLimits, serve_metrics};
use crate::probe::{NetworkProber, ProbeSettings, ProbeTls};
use crate::provider::Registry;
use crate::secret::Passphrase;
use crate::server::{self, ConnectionLimits, Limits, ServeOptions};
use crate::store::{CachedStore, CredentialStore as _, DEFAULT_CAPACITY, Store};
use crate::vault::{KeyRotation, ProbeBudget, Sweep, SweepSettings, SystemClock, Vault};

/// Threads for blocking work (SQLite calls, Argon2). SQLite serves at most 4 readers and one
/// writer at a time, so more threads only wait, each with its own stack and malloc arena: at
/// 1M bindings with keys spread, tokio's default of 512 grew to 90 threads and 160 MiB RSS.
pub const MAX_BLOCKING_THREADS: usize = 8;

/// How long a pair's lease outlives the probe's timeout: the commit after it.
const LEASE_COMMIT_GRACE: Duration = Duration::from_secs(30);

/// Where `serve --dev` keeps its data and its generated passphrase.
pub const DEV_DATA_DIR: &str = "vault-dev";
const DEV_PASSPHRASE_FILE: &str = "passphrase";

/// The listener's TLS files: `--tls-cert`, `--tls-key` and `--tls-client-ca`.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn of(args: &ServeArgs) -> Option<Self> {
        let (cert, key) = (args.tls_cert.clone()?, args.tls_key.clone()?);
        Some(Self { cert, key, client_ca: args.tls_client_ca.clone() })
    }

    /// Reads them into a server config.
    fn load(&self) -> Result<Arc<rustls::ServerConfig>, RunError> {
        let read = |flag: &str, path: &Path| {
            fs::read(path).map_err(|e| RunError::Tls(format!("cannot read {flag} {}: {e}", path.display())))
        };
        let (cert_pem, key_pem) =
            (read("--tls-cert", &self.cert)?, zeroize::Zeroizing::new(read("--tls-key", &self.key)?));
        if let Ok(meta) = fs::metadata(&self.key)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                key = %self.key.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the --tls-key file is readable by group or others; chmod 600 it"
            );
        }
        let ca_pem = self.client_ca.as_deref().map(|ca| read("--tls-client-ca", ca)).transpose()?;
        server::tls_config(&cert_pem, &key_pem, ca_pem.as_deref()).map_err(RunError::Tls)
    }
}

/// What `serve` set up before the vault was opened.
struct Started {
    /// `serve --dev` made the vault just now (its admin token is to be printed).
    new_dev_vault: bool,
    listener_tls: Option<Arc<rustls::ServerConfig>>,
    hangups: tokio::signal::unix::Signal,
}

/// On each SIGHUP, reads the TLS files again (a renewed certificate) for the connections that
/// follow; files that do not load leave the current ones in place. Nothing else is re-read.
fn tls_reloads(
    mut hangups: tokio::signal::unix::Signal,
    files: Option<TlsFiles>,
    live: Option<server::LiveTls>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let (Some(files), Some(live)) = (&files, &live) else {
                tracing::info!("SIGHUP: no TLS files to read again (other settings are read at start only)");
                continue;
            };
            match files.load() {
                Ok(config) => {
                    live.replace(config);
                    tracing::info!("SIGHUP: TLS files read again; new connections use them");
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS files not reloaded; serving the previous ones"),
            }
        }
    })
}

/// Dev mode: makes the data dir and a random passphrase file (0600) on first run, then inits.
/// Returns the passphrase file and whether the vault is new.
fn prepare_dev(dir: &Path, passphrase_file: Option<PathBuf>) -> Result<(PathBuf, bool), RunError> {
    let dev_err = |what: &str, e: std::io::Error| RunError::Dev(format!("dev mode: cannot {what}: {e}"));
    let file = passphrase_file.unwrap_or_else(|| dir.join(DEV_PASSPHRASE_FILE));
    if !datadir::is_initialised(dir) {
        // A dev vault whose database went missing is not silently replaced by an empty one.
        if let Err(e @ datadir::DataDirError::DatabaseMissing(_)) = datadir::check_present(dir) {
            return Err(e.into());
        }
        if let Some(other) = datadir::foreign_entry(dir, &[DEV_PASSPHRASE_FILE])? {
            return Err(datadir::DataDirError::NotEmpty(dir.to_owned(), other).into());
        }
        fs::create_dir_all(dir).map_err(|e| dev_err("create the data dir", e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| dev_err("chmod the data dir", e))?;
        if !file.exists() {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let text = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(|e| dev_err("create the passphrase file", e))?;
            f.write_all(text.as_bytes()).map_err(|e| dev_err("write the passphrase file", e))?;
        }
        let passphrase = read_passphrase(&PassphraseArgs { passphrase_file: Some(file.clone()) }, None)?;
        datadir::init_keeping(dir, &passphrase, now(), &[DEV_PASSPHRASE_FILE])?;
        tracing::info!(data_dir = %dir.display(), passphrase_file = %file.display(), "dev mode: initialised a new vault");
        return Ok((file, true));
    }
    Ok((file, false))
}

/// The listener's limits from the flags; the descriptor limit is raised to fit the connection cap.
fn limits(args: &ServeArgs) -> Limits {
    let max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    crate::hygiene::raise_open_files(max_connections);
    Limits {
        connections: ConnectionLimits {
            max_connections,
            max_per_peer: usize::try_from(args.max_connections_per_peer).unwrap_or(usize::MAX),
            handshake_timeout: Duration::from_secs(args.handshake_timeout),
            tcp_keepalive: Duration::from_secs(args.tcp_keepalive),
        },
        max_streams_per_connection: args.max_streams_per_connection,
        http2_keepalive_interval: Duration::from_secs(args.http2_keepalive_interval),
        http2_keepalive_timeout: Duration::from_secs(args.http2_keepalive_timeout),
        max_rpcs: usize::try_from(args.max_concurrent_rpcs).unwrap_or(usize::MAX),
        max_public_rpcs: usize::try_from(args.max_public_rpcs).unwrap_or(usize::MAX),
    }
}

/// The network prober from the probe flags.
fn prober(args: &ServeArgs, tls: ProbeTls) -> NetworkProber {
    NetworkProber::new(
        tls,
        ProbeSettings {
            connect_timeout: Duration::from_secs(args.probe_connect_timeout),
            overall_timeout: Duration::from_secs(args.probe_timeout),
            per_host_concurrency: usize::try_from(args.probe_host_concurrency).unwrap_or(1),
            smtp_for_all: args.probe_smtp,
        },
    )
}

/// Registers SIGTERM and SIGINT now (so a signal right after start-up is not lost), and
/// resolves when either arrives.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received; draining");
    })
}

/// Serves until SIGTERM or SIGINT; `hangups` (SIGHUP, taken over by the caller) re-read the TLS
/// files.
pub async fn serve(
    args: ServeArgs,
    env_passphrase: Option<Passphrase>,
    hangups: tokio::signal::unix::Signal,
) -> Result<(), RunError> {
    // Asked first: a --database from $VAULT_DATABASE met the default data dir and was refused as
    // if --data-dir had been given.
    if args.dev && Database::from_args(&args.database, None).is_ok_and(|d| matches!(d, Database::Postgres { .. })) {
        return Err(RunError::Dev(
            "--dev keeps its vault in a data dir; it takes no PostgreSQL --database (unset VAULT_DATABASE)".into(),
        ));
    }

    // Every flag is checked before --dev creates a vault: one made by a run that then stopped
    // would never print its admin token.
    let listener_tls = TlsFiles::of(&args).map(|f| f.load()).transpose()?;
    if listener_tls.is_none() && !args.listen.ip().is_loopback() && !args.allow_plaintext {
        return Err(RunError::PlaintextNotLoopback(args.listen));
    }
    let tls = ProbeTls::new(args.probe_ca_file.as_deref(), &args.probe_resolve).map_err(RunError::Probe)?;
    let registry = match &args.providers {
        Some(path) => Registry::with_file(path)?,
        None => Registry::builtin(),
    };
    // A typo here (a port, a host) would leave probes going to the real host, silently.
    for o in &args.probe_resolve {
        let ports = registry.ports_of(&o.host, args.probe_smtp);
        if !ports.contains(&o.port) {
            let probed = match ports.as_slice() {
                [] if registry.ports_of(&o.host, true).contains(&o.port) => {
                    "SMTP is not probed there: --probe-smtp, or smtp_probe in the providers file".to_owned()
                }
                [] => "no provider probes that host".to_owned(),
                ports => {
                    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                    format!("{} is probed on port {}", o.host, ports.join(" and "))
                }
            };
            tracing::warn!(
                "--probe-resolve {}:{} matches no server a provider is probed at, so it changes nothing ({probed})",
                o.host,
                o.port
            );
        }
    }
    let (database, passphrase_args, new_dev_vault) = if args.dev {
        let dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEV_DATA_DIR));
        if !datadir::is_initialised(&dir) {
            // A new dev vault's admin token is shown once, on stdout: not made if it would be lost.
            super::require_stdout()?;
        }
        let (file, new) = prepare_dev(&dir, args.passphrase.passphrase_file.clone())?;
        (Database::DataDir(dir), PassphraseArgs { passphrase_file: Some(file) }, new)
    } else {
        let database = Database::from_args(&args.database, args.data_dir.as_deref())?;
        (database, PassphraseArgs { passphrase_file: args.passphrase.passphrase_file.clone() }, false)
    };
    let passphrase = read_passphrase(&passphrase_args, env_passphrase)?;
    let dir = match database {
        Database::DataDir(dir) => dir,
        Database::Postgres { url, ca_file } => {
            // Replicas share the database; none owns it.
            let (store, keyring, kek) = unlock_postgres(&url, ca_file.as_deref(), &passphrase).await?;
            drop(passphrase);
            store.check_schema().await.map_err(|e| RunError::Database(format!("PostgreSQL --database: {e}")))?;
            let described = store.describe().to_owned();
            let started = Started { new_dev_vault: false, listener_tls, hangups };
            run_vault(args, store, keyring, kek, started, registry, tls, &described).await?;
            tracing::info!("stopped");
            return Ok(());
        }
    };
    datadir::check_present(&dir)?;
    // One server per data dir: a second one would serve from a cache the first one invalidates.
    let _owner = datadir::lock_for_serve(&dir)?;
    // The KEK stays in memory (as the data keys do) so RotateDataKey can wrap a new key.
    let (store, keyring, kek) = datadir::unlock_keeping_kek(&dir, &passphrase)?;
    drop(passphrase);
    datadir::upgrade_seals(&dir, &store, &keyring)?;
    let described = format!("data dir {}", dir.display());
    let started = Started { new_dev_vault, listener_tls, hangups };
    let store = run_vault(args, store, keyring, kek, started, registry, tls, &described).await?;
    match store.inner().sync().checkpoint() {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                "WAL checkpoint at shutdown was kept from finishing; the WAL will be replayed at next start"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed; the WAL will be replayed at next start");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Wires the vault together over an unlocked store and serves until a signal; returns the store
/// (for the engine's own shutdown work).
#[allow(clippy::too_many_arguments)]
async fn run_vault<S: Store>(
    args: ServeArgs,
    store: S,
    keyring: Keyring,
    kek: Kek,
    started: Started,
    registry: Registry,
    tls: ProbeTls,
    described: &str,
) -> Result<Arc<CachedStore<S>>, RunError> {
    let Started { new_dev_vault, listener_tls, hangups } = started;
    if store.shared() && args.data_key_max_age.is_some() {
        return Err(RunError::Database(
            "--data-key-max-age is not available with a PostgreSQL --database: replicas would not know the new key"
                .into(),
        ));
    }
    let store = Arc::new(CachedStore::new(store, DEFAULT_CAPACITY));
    let follower = {
        let store = store.clone();
        tokio::spawn(async move { store.follow_changes().await })
    };
    let keys = Arc::new(LiveKeyring::new(keyring));
    let tokens = Arc::new(Tokens::new(store.clone(), keys.clone()));
    if new_dev_vault {
        let (token, id) = tokens.mint(&Role::Admin, now()).await?;
        tracing::info!(token_id = %id, "dev mode: minted an admin token; it is printed once on stdout");
        super::emit(format_args!("admin token (shown once): {}", token.expose()))?;
    }
    tokens.reload(now()).await?;
    let mut prober = prober(&args, tls);
    if store.shared() {
        prober = prober.with_shared_slots(store.clone());
    }
    let budget = ProbeBudget::new(args.probe_burst, args.probe_per_hour);
    let registry_metrics = Arc::new(Metrics::default());
    let rotation =
        Arc::new(KeyRotation::new(store.clone(), keys.clone(), kek, Arc::new(SystemClock), registry_metrics.clone()));
    let vault = Arc::new(
        Vault::new(
            store.clone(),
            keys,
            registry,
            Arc::new(prober),
            budget,
            Arc::new(SystemClock),
            registry_metrics.clone(),
        )
        .with_rotation(rotation.clone())
        .with_lease_for(Duration::from_secs(args.probe_timeout) + LEASE_COMMIT_GRACE),
    );
    if !store.shared() {
        rotation.resume().await;
    }
    let auto_rotation = args.data_key_max_age.map(|age| tokio::spawn(rotation.clone().rotate_when_older_than(age)));
    let sweep = args.verify_every.map(|every| {
        let settings = SweepSettings { every, rate_per_host: args.verify_rate };
        tokio::spawn(Sweep::new(vault.clone(), settings).run())
    });
    let listener = TcpListener::bind(args.listen).await.map_err(|e| RunError::Listen(args.listen, e))?;
    let addr = listener.local_addr().map_err(|e| RunError::Listen(args.listen, e))?;
    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| RunError::Listen(addr, e))?;
            let bound = l.local_addr().map_err(|e| RunError::Listen(addr, e))?;
            tracing::info!("metrics on http://{bound}/metrics");
            Some(tokio::spawn(serve_metrics(l, registry_metrics.clone(), store.clone(), MetricsLimits::default())))
        }
        None => None,
    };
    let shutdown = shutdown_signal()?;
    let listener_tls = listener_tls.map(server::LiveTls::new);
    let reloads = tls_reloads(hangups, TlsFiles::of(&args), listener_tls.clone());
    let scheme = if args.tls_cert.is_some() { "TLS" } else { "plaintext" };
    tracing::info!(database = %described, "listening on {addr} ({scheme})");
    server::serve(
        listener,
        vault,
        tokens,
        ServeOptions {
            tls: listener_tls,
            limits: limits(&args),
            usage_flush: Duration::from_secs(args.usage_flush_interval),
            metrics: registry_metrics,
        },
        shutdown,
    )
    .await?;
    follower.abort();
    for task in [metrics_task, auto_rotation, sweep, Some(reloads)].into_iter().flatten() {
        task.abort();
    }
    Ok(store)
}

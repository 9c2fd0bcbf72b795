//! Process start-up: logging, passphrase input, dev mode, unlocking and serving until a signal.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rand::RngCore as _;
use tokio::net::TcpListener;

use crate::cli::{Cli, Command, InitArgs, PassphraseArgs, ServeArgs};
use crate::datadir::{self, DataDirError};
use crate::probe::{NetworkProber, ProbeSettings, ProbeTls};
use crate::provider::{ProviderFileError, Registry};
use crate::secret::Passphrase;
use crate::server::{self, ServeError};
use crate::vault::{Clock, ProbeBudget, SystemClock, Vault};

/// Where `serve --dev` keeps its data and its generated passphrase.
pub const DEV_DATA_DIR: &str = "vault-dev";
const DEV_PASSPHRASE_FILE: &str = "passphrase";

/// Everything that stops the process; each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{0}")]
    Passphrase(String),
    #[error("invalid --log-level: {0}")]
    LogFilter(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("refusing plaintext gRPC on non-loopback address {0}; pass --allow-plaintext to opt in")]
    PlaintextNotLoopback(SocketAddr),
    #[error("{0}")]
    Probe(String),
    #[error(transparent)]
    Providers(#[from] ProviderFileError),
    #[error("{0}")]
    Dev(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("server failed: {0}")]
    Serve(#[from] ServeError),
}

pub fn main(cli: Cli) -> Result<(), RunError> {
    init_logging(&cli.log_level)?;
    match cli.command {
        Command::Init(args) => init(&args),
        Command::Serve(args) => {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(RunError::Runtime)?;
            runtime.block_on(serve(args))
        }
    }
}

fn init_logging(filter: &str) -> Result<(), RunError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| RunError::LogFilter(e.to_string()))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    Ok(())
}

fn now() -> i64 {
    SystemClock.now_millis()
}

/// Reads the passphrase from `--passphrase-file`, else `$VAULT_PASSPHRASE`.
fn read_passphrase(args: &PassphraseArgs) -> Result<Passphrase, RunError> {
    let passphrase = match &args.passphrase_file {
        Some(path) => {
            let text = fs::read_to_string(path)
                .map_err(|e| RunError::Passphrase(format!("cannot read passphrase file {}: {e}", path.display())))?;
            if fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
                tracing::warn!(file = %path.display(), "the passphrase file is world-readable; chmod 600 it");
            }
            Passphrase::new(&text)
        }
        None => match std::env::var("VAULT_PASSPHRASE") {
            Ok(v) => Passphrase::new(&v),
            Err(_) => {
                return Err(RunError::Passphrase(
                    "no passphrase: pass --passphrase-file FILE or set VAULT_PASSPHRASE".into(),
                ));
            }
        },
    };
    if passphrase.is_empty() {
        return Err(RunError::Passphrase("the passphrase is empty".into()));
    }
    Ok(passphrase)
}

fn init(args: &InitArgs) -> Result<(), RunError> {
    let passphrase = read_passphrase(&args.passphrase)?;
    datadir::init(&args.data_dir, &passphrase, now())?;
    println!("initialised {}", args.data_dir.display());
    Ok(())
}

/// Dev mode: makes the data dir and a random passphrase file (0600) on first run, then inits.
fn prepare_dev(dir: &Path, passphrase_file: Option<PathBuf>) -> Result<PathBuf, RunError> {
    let dev_err = |what: &str, e: std::io::Error| RunError::Dev(format!("dev mode: cannot {what}: {e}"));
    let file = passphrase_file.unwrap_or_else(|| dir.join(DEV_PASSPHRASE_FILE));
    if !datadir::is_initialised(dir) {
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
        let passphrase = read_passphrase(&PassphraseArgs { passphrase_file: Some(file.clone()) })?;
        datadir::init(dir, &passphrase, now())?;
        tracing::info!(data_dir = %dir.display(), passphrase_file = %file.display(), "dev mode: initialised a new vault");
    }
    Ok(file)
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

async fn serve(args: ServeArgs) -> Result<(), RunError> {
    let (dir, passphrase_args) = if args.dev {
        let dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEV_DATA_DIR));
        let file = prepare_dev(&dir, args.passphrase.passphrase_file.clone())?;
        (dir, PassphraseArgs { passphrase_file: Some(file) })
    } else {
        // clap guarantees --data-dir without --dev.
        let dir = args.data_dir.clone().ok_or_else(|| RunError::Dev("--data-dir is required".into()))?;
        (dir, PassphraseArgs { passphrase_file: args.passphrase.passphrase_file.clone() })
    };
    if !args.listen.ip().is_loopback() && !args.allow_plaintext {
        return Err(RunError::PlaintextNotLoopback(args.listen));
    }
    let tls = ProbeTls::new(args.probe_ca_file.as_deref(), &args.probe_resolve).map_err(RunError::Probe)?;
    let registry = match &args.providers {
        Some(path) => Registry::with_file(path)?,
        None => Registry::builtin(),
    };
    let passphrase = read_passphrase(&passphrase_args)?;
    let (store, keyring) = datadir::unlock(&dir, &passphrase)?;
    drop(passphrase);
    let store = Arc::new(store);
    let prober = NetworkProber::new(
        tls,
        ProbeSettings {
            connect_timeout: Duration::from_secs(args.probe_connect_timeout),
            overall_timeout: Duration::from_secs(args.probe_timeout),
            per_host_concurrency: usize::try_from(args.probe_host_concurrency).unwrap_or(1),
            smtp_for_all: args.probe_smtp,
        },
    );
    let budget = ProbeBudget::new(args.probe_burst, args.probe_per_hour);
    let vault = Arc::new(Vault::new(store.clone(), keyring, registry, Arc::new(prober), budget, Arc::new(SystemClock)));
    let listener = TcpListener::bind(args.listen).await.map_err(|e| RunError::Listen(args.listen, e))?;
    let addr = listener.local_addr().map_err(|e| RunError::Listen(args.listen, e))?;
    let shutdown = shutdown_signal()?;
    tracing::info!(data_dir = %dir.display(), "listening on {addr}");
    server::serve(listener, vault, shutdown).await?;
    if let Err(e) = store.checkpoint() {
        tracing::warn!(error = %e, "WAL checkpoint at shutdown failed; the WAL will be replayed at next start");
    }
    tracing::info!("stopped");
    Ok(())
}

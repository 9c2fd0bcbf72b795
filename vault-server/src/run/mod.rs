//! Process start-up: logging, passphrase input, and the subcommands.

mod serve;
mod tokens;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use crate::cli::{Cli, Command, InitArgs, LogFormat, PassphraseArgs};
use crate::datadir::{self, DataDirError};
use crate::provider::ProviderFileError;
use crate::secret::Passphrase;
use crate::server::ServeError;
use crate::store::StoreError;
use crate::vault::{Clock, SystemClock};

pub use serve::DEV_DATA_DIR;

/// Crates whose TRACE/DEBUG output could carry protocol bytes (IMAP LOGIN, SMTP AUTH, HTTP/2
/// headers with bearer tokens). They are capped at INFO whatever `--log-level` says.
const CAPPED_TARGETS: &[&str] =
    &["async_imap", "imap_proto", "lettre", "h2", "hyper", "hyper_util", "tonic", "tower", "rustls", "tokio_rustls"];

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
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Token(String),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

pub fn main(cli: Cli) -> Result<(), RunError> {
    init_logging(&cli.log_level, cli.log_format)?;
    match cli.command {
        Command::Init(args) => init(&args),
        Command::Token(args) => tokens::run(args),
        Command::Serve(args) => {
            crate::hygiene::disable_core_dumps();
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(RunError::Runtime)?;
            runtime.block_on(serve::serve(*args))
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) -> Result<(), RunError> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| RunError::LogFilter(e.to_string()))?;
    for target in CAPPED_TARGETS {
        filter =
            filter.add_directive(format!("{target}=info").parse().map_err(|e| RunError::LogFilter(format!("{e}")))?);
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
    Ok(())
}

pub(crate) fn now() -> i64 {
    SystemClock.now_millis()
}

/// Reads the passphrase from `--passphrase-file`, else `$VAULT_PASSPHRASE`.
pub(crate) fn read_passphrase(args: &PassphraseArgs) -> Result<Passphrase, RunError> {
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

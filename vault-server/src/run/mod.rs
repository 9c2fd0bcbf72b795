//! Process start-up: logging, passphrase input, and the subcommands.

mod database;
mod migrate_store;
mod serve;
mod token_cli;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::cli::{BackupCommand, Cli, Command, InitArgs, LogFormat, PassphraseArgs, PassphraseCommand};
use crate::clock::{Clock, SystemClock};
use crate::datadir::{self, DataDirError};
use crate::provider::ProviderFileError;
use crate::secret::Passphrase;
use crate::server::ServeError;
use crate::store::StoreError;

pub use serve::DEV_DATA_DIR;

/// Crates whose TRACE/DEBUG output could carry protocol bytes (IMAP LOGIN, SMTP AUTH, HTTP/2
/// headers with bearer tokens). They are capped at INFO whatever `--log-level` says.
/// The cap is a second filter that every line must also pass, so no `--log-level` string (span
/// filters and more specific targets included) can lift it.
const CAPPED_TARGETS: &[&str] = &[
    "imap_proto",
    "lettre",
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tonic_health",
    "tonic_reflection",
    "tower",
    "rustls",
    "tokio_rustls",
    "tokio_util",
    "tokio_postgres",
    "deadpool_postgres",
    "postgres_protocol",
];

/// Everything that stops the process; each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Backup(#[from] datadir::BackupError),
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
    #[error("{0}")]
    Database(String),
    #[error("cannot write to standard output: {0}")]
    Output(String),
    /// Flags that cannot go together or do not parse: exit code 2, as for clap's own.
    #[error("{0}")]
    Usage(String),
}

impl RunError {
    /// The process's exit code: 2 for a bad flag, 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Writes `text` and a newline to stdout, flushed: a write that fails (a full disk, a closed
/// pipe) is an error with one line, not a panic.
pub(crate) fn emit(text: impl std::fmt::Display) -> Result<(), RunError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).map_err(|e| RunError::Output(e.to_string()))
}

/// Writes a line to stderr, ignoring a failure: a closed stderr must not panic a command
/// midway (after a token is minted, before it is shown).
pub(crate) fn note(text: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Fails when stdout goes nowhere: a secret shown there once (a new token) would be lost. A
/// device that is not a terminal (`/dev/null`, `/dev/zero`; the runtime reopens a closed stdout
/// on `/dev/null`) is refused; a terminal, a file or a pipe is not.
pub(crate) fn require_stdout() -> Result<(), RunError> {
    use std::io::IsTerminal as _;
    let out = nix::sys::stat::fstat(std::io::stdout()).map_err(|e| RunError::Output(e.to_string()))?;
    let is_char = (out.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFCHR;
    if is_char && !std::io::stdout().is_terminal() {
        return Err(RunError::Output(
            "it is a device that keeps nothing (/dev/null, or closed), so nobody would see the token; nothing was done"
                .into(),
        ));
    }
    Ok(())
}

/// The passphrases given through the environment, taken out of it by `main` before anything
/// else ran (see [`take_env_passphrases`]).
#[derive(Debug, Default)]
pub struct EnvPassphrases {
    /// `$VAULT_PASSPHRASE`.
    pub current: Option<Passphrase>,
    /// `$VAULT_NEW_PASSPHRASE` (for `passphrase change`).
    pub new: Option<Passphrase>,
}

/// Runs a parsed command line.
pub fn main(cli: Cli, env: EnvPassphrases) -> Result<(), RunError> {
    let env_passphrase = env.current;
    init_logging(&cli.log_level, cli.log_format)?;
    // Every command holds the passphrase or the keyring at some point.
    crate::hygiene::disable_core_dumps();
    crate::hygiene::private_umask();
    match cli.command {
        Command::Init(args) => init(&args, env_passphrase),
        Command::Token(args) => token_cli::run(args, env_passphrase),
        Command::Backup(args) => match (args.command, args.data_dir, args.file) {
            (Some(BackupCommand::Verify { file, passphrase }), _, _) => {
                let passphrase = read_passphrase(&passphrase, env_passphrase)?;
                let r = datadir::verify_backup(&file, &passphrase)?;
                emit(format_args!(
                    "backup {} is sound: {} active codes open, {} revoked tombstones, data keys {:?}",
                    file.display(),
                    r.active,
                    r.revoked,
                    r.key_ids
                ))?;
                Ok(())
            }
            (None, Some(dir), Some(file)) => {
                datadir::backup(&dir, &file)?;
                emit(format_args!("wrote backup {} (it opens with the current passphrase)", file.display()))?;
                Ok(())
            }
            // clap requires --data-dir and FILE without a subcommand.
            _ => Err(RunError::Dev("backup needs --data-dir DIR and FILE, or `backup verify FILE`".into())),
        },
        Command::MigrateStore(args) => migrate_store::run(&args, env_passphrase),
        Command::Restore { data_dir, file } => {
            datadir::restore(&data_dir, &file)?;
            emit(format_args!(
                "restored {} into {}; serve it with the passphrase of the backup's time",
                file.display(),
                data_dir.display()
            ))?;
            Ok(())
        }
        Command::Passphrase(args) => match args.command {
            PassphraseCommand::Change { data_dir, passphrase, new_passphrase_file } => {
                let current = read_passphrase(&passphrase, env_passphrase)?;
                let new = match (new_passphrase_file, env.new) {
                    (Some(path), _) => read_passphrase_file(&path)?,
                    (None, Some(p)) => p,
                    (None, None) => {
                        return Err(RunError::Passphrase(
                            "no new passphrase: pass --new-passphrase-file FILE or set VAULT_NEW_PASSPHRASE".into(),
                        ));
                    }
                };
                datadir::change_passphrase(&data_dir, &current, &new)?;
                emit(format_args!(
                    "changed the passphrase of {}; start `serve` with the new one from now on",
                    data_dir.display()
                ))?;
                Ok(())
            }
        },
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(serve::MAX_BLOCKING_THREADS)
                .build()
                .map_err(RunError::Runtime)?;
            // Taken over before anything else: SIGHUP's default would end the process during
            // start-up (the unlock, a rotation resumed). One that comes early is handled once
            // serving starts (it re-reads the TLS files).
            let hangups = {
                let _in_runtime = runtime.enter();
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(RunError::Signals)?
            };
            runtime.block_on(serve::serve(*args, env_passphrase, hangups))
        }
    }
}

/// The user's filter, and the cap on protocol crates as a second filter after it: a line is
/// written only if both let it through.
fn init_logging(filter: &str, format: LogFormat) -> Result<(), RunError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::{FilterExt as _, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let user = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| RunError::Usage(format!("invalid --log-level: {e}")))?;
    let cap = CAPPED_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, target| t.with_target(*target, LevelFilter::INFO));
    let filter = user.and(cap);
    // Colours only on a terminal: a log file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let registry = tracing_subscriber::registry();
    let installed = match format {
        LogFormat::Text => registry.with(layer.with_filter(filter)).try_init(),
        LogFormat::Json => registry.with(layer.json().with_current_span(true).with_filter(filter)).try_init(),
    };
    installed.map_err(|e| RunError::LogFilter(format!("cannot install the logger: {e}")))
}

/// Takes `$VAULT_PASSPHRASE` and `$VAULT_NEW_PASSPHRASE` out of the process environment, so
/// nothing later (a child process, a library reading the environment) can see them. Call it
/// first thing in `main`, while the process has one thread. The initial environment block on the
/// stack (what `/proc/PID/environ` shows) keeps its bytes; the process makes itself
/// non-dumpable, which leaves that file to root.
pub fn take_env_passphrases() -> EnvPassphrases {
    EnvPassphrases { current: take_env("VAULT_PASSPHRASE"), new: take_env("VAULT_NEW_PASSPHRASE") }
}

pub(crate) fn now() -> i64 {
    SystemClock.now_millis()
}

#[allow(unsafe_code)]
fn take_env(var: &str) -> Option<Passphrase> {
    let value = std::env::var_os(var)?;
    // SAFETY: called at the start of `main`, before any other thread exists, so no one reads
    // or writes the environment concurrently.
    unsafe { std::env::remove_var(var) };
    let value = zeroize::Zeroizing::new(value.into_encoded_bytes());
    Some(Passphrase::new(&String::from_utf8_lossy(&value)))
}

/// Largest passphrase file read.
const MAX_PASSPHRASE_FILE: u64 = 64 * 1024;

/// Reads a passphrase file (or a pipe: `--passphrase-file <(pass show vault)`), refusing one that
/// group or others may read, a directory or device, and one over 64 KiB; the bytes read are
/// zeroized.
fn read_passphrase_file(path: &Path) -> Result<Passphrase, RunError> {
    use std::io::Read as _;
    let cannot =
        |e: std::io::Error| RunError::Passphrase(format!("cannot read passphrase file {}: {e}", path.display()));
    let (mut file, meta) = crate::input_file::open(path).map_err(|e| match e {
        crate::input_file::InputError::Io(e) => cannot(e),
        crate::input_file::InputError::NotFileOrPipe => RunError::Passphrase(format!(
            "passphrase file {} is not a regular file or a pipe (a directory or a device); give a file holding the passphrase",
            path.display()
        )),
    })?;
    let kind = meta.file_type();
    let mode = meta.permissions().mode();
    // Writable by others is refused too: `init` would seal the vault under a planted passphrase.
    if kind.is_file() && mode & 0o066 != 0 {
        return Err(RunError::Passphrase(format!(
            "passphrase file {} is readable or writable by group or others (mode {:o}); run: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    (&mut file).take(MAX_PASSPHRASE_FILE + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > MAX_PASSPHRASE_FILE {
        return Err(RunError::Passphrase(format!(
            "passphrase file {} is over {MAX_PASSPHRASE_FILE} bytes; a passphrase file holds one line",
            path.display()
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| RunError::Passphrase(format!("passphrase file {} is not UTF-8", path.display())))?;
    Ok(Passphrase::new(text))
}

/// The passphrase from `--passphrase-file`, else from `$VAULT_PASSPHRASE` (taken by `main`).
pub(crate) fn read_passphrase(args: &PassphraseArgs, env: Option<Passphrase>) -> Result<Passphrase, RunError> {
    let passphrase = match (&args.passphrase_file, env) {
        (Some(path), _) => read_passphrase_file(path)?,
        (None, Some(p)) => p,
        (None, None) => {
            return Err(RunError::Passphrase(
                "no passphrase: pass --passphrase-file FILE or set VAULT_PASSPHRASE".into(),
            ));
        }
    };
    if passphrase.is_empty() {
        return Err(RunError::Passphrase("the passphrase is empty".into()));
    }
    Ok(passphrase)
}

fn init(args: &InitArgs, env_passphrase: Option<Passphrase>) -> Result<(), RunError> {
    let database = database::Database::from_args(&args.database, args.data_dir.as_deref())?;
    let passphrase = read_passphrase(&args.passphrase, env_passphrase)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RunError::Runtime)?;
    runtime.block_on(database.init(&passphrase, now()))?;
    emit(format_args!("initialised {database}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_passphrase_file_others_can_read_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("pass");
        fs::write(&file, "correct horse battery\n").unwrap();
        let args = PassphraseArgs { passphrase_file: Some(file.clone()) };
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let err = read_passphrase(&args, None).unwrap_err().to_string();
            assert!(err.contains("by group or others") && err.contains("chmod 600"), "{err}");
            assert!(!err.contains("horse"), "{err}");
        }
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_passphrase(&args, None).unwrap().expose(), "correct horse battery");
        let from_env = read_passphrase(&PassphraseArgs { passphrase_file: None }, Some(Passphrase::new("env one")));
        assert_eq!(from_env.unwrap().expose(), "env one");
        assert!(read_passphrase(&PassphraseArgs { passphrase_file: None }, None).is_err());
    }

    #[test]
    fn a_passphrase_file_that_is_a_directory_a_device_or_too_large_is_refused_and_a_pipe_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let read = |p: &Path| read_passphrase(&PassphraseArgs { passphrase_file: Some(p.to_owned()) }, None);
        // Found by an attack: /dev/null was told to `chmod 600 /dev/null`.
        for path in [Path::new("/dev/null"), tmp.path()] {
            let err = read(path).unwrap_err().to_string();
            assert!(err.contains("not a regular file or a pipe") && !err.contains("chmod"), "{err}");
        }
        let big = tmp.path().join("big");
        fs::write(&big, vec![b'a'; 70_000]).unwrap();
        fs::set_permissions(&big, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&big).unwrap_err().to_string().contains("over 65536 bytes"));
        // A pipe, as `<(pass show vault)` gives (/dev/fd/N): read.
        let (out, into) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&into, b"from a pipe\n").unwrap();
        drop(into);
        let path = format!("/dev/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&out));
        assert_eq!(read(Path::new(&path)).unwrap().expose(), "from a pipe");
        // A named pipe nobody writes: refused as empty, without waiting (it hung).
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read(&fifo).unwrap_err().to_string().contains("empty"));
    }
}

//! vaultctl: the admin CLI of authcode-vault, built on vault-client. Codes are read from the
//! terminal without echo, or from stdin; never from the command line, where `ps` and shell
//! history would keep them.

mod output;

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vault_client::{
    AuditFilter, ConnectOptions, CredentialFilter, Error, ProbeOutcome, ProbeReport, SecretString, TlsOptions,
    UnusedFilter, VaultClient,
};

use output::{Format, Table};

const EXIT_CODES: &str = "Exit codes: 0 done; 1 cannot reach the vault or other error; 2 bad usage or argument; \
3 no such binding; 4 conflict (already bound, revoked, version moved); 5 the provider refused the code (verify: \
the stored one); 6 try again later (provider unreachable, rate limited, vault unavailable; verify: the probe could \
not tell); 7 not authenticated or not allowed; 8 data loss or internal error; 9 the change may have been made \
(the vault lost its database while committing: get the binding to see).";

#[derive(Parser)]
#[command(name = "vaultctl", version, about = "Admin CLI for authcode-vault", after_help = EXIT_CODES)]
struct Cli {
    /// The vault's address: `http://...`, or `https://...` with TLS (no other scheme).
    #[arg(long, env = "VAULT_ADDR", default_value = "http://127.0.0.1:50051", global = true, hide_env_values = true)]
    addr: String,
    /// A file holding the bearer token; else $VAULT_TOKEN, else the file $VAULT_TOKEN_FILE names.
    #[arg(long, value_name = "PATH", global = true)]
    token_file: Option<PathBuf>,
    /// PEM CA that signed the vault's certificate (default: the public roots).
    #[arg(long, env = "VAULT_CACERT", value_name = "PATH", global = true, hide_env_values = true)]
    ca_file: Option<PathBuf>,
    /// Seconds a call may take (at least 1).
    #[arg(long, default_value_t = 60, value_name = "SECS", global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Output of get, list, review and audit.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bind a code (read from the terminal without echo, or from stdin) after the provider accepts it.
    Bind { mailbox: String, client: String },
    /// Replace a code (read like bind) after the provider accepts the new one.
    Rotate {
        mailbox: String,
        client: String,
        /// Only if the binding is at this version.
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    /// Destroy a code, keeping a tombstone.
    Revoke {
        mailbox: String,
        client: String,
        /// Kept in the audit trail (at most 500 characters; never the code or a token).
        #[arg(long, default_value = "", value_parser = reason)]
        reason: String,
    },
    /// Re-probe a stored code and record a verdict (an outage is only reported).
    Verify { mailbox: String, client: String },
    /// A binding's metadata.
    Get { mailbox: String, client: String },
    /// Bindings' metadata, every page.
    List {
        #[arg(long, default_value = "")]
        mailbox: String,
        #[arg(long, default_value = "")]
        client: String,
        #[arg(long)]
        include_revoked: bool,
        /// Only codes the provider refused at their last probe.
        #[arg(long)]
        rejected: bool,
        /// Only codes not verified for this long (e.g. 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        not_verified_for: Option<Duration>,
    },
    /// The review: unused clients, codes the provider refuses, codes not verified lately.
    Review {
        /// A client is unused after this long without a Reveal.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        unused_for: Duration,
        /// A code is unchecked after this long without a probe.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        not_verified_for: Duration,
    },
    /// The audit trail, newest first.
    Audit {
        #[arg(long, default_value = "")]
        mailbox: String,
        #[arg(long, default_value = "")]
        client: String,
        #[arg(long, default_value = "")]
        caller: String,
        /// Events at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print a code (client token of that client) on stdout.
    Reveal { mailbox: String, client: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "vaultctl: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// clap's message where it names only flags and commands; otherwise what was wrong without the
/// word typed (a code typed after the pair, as a command, or as a flag's value), which clap
/// would print into a terminal's scrollback or a CI log.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    // A flag's name is shown: it is no code.
    let flag_like = |w: &str| {
        let name = w.strip_prefix("--").or_else(|| w.strip_prefix('-')).unwrap_or_default();
        name.len() <= 30
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    let arg = context(ContextKind::InvalidArg).unwrap_or("an argument");
    let said = match e.kind() {
        // These repeat nothing typed but flag and command names.
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | ErrorKind::MissingRequiredArgument
        | ErrorKind::MissingSubcommand
        | ErrorKind::ArgumentConflict => None,
        ErrorKind::UnknownArgument if context(ContextKind::InvalidArg).is_some_and(flag_like) => None,
        ErrorKind::UnknownArgument => Some("an unexpected argument after the command's own".to_owned()),
        ErrorKind::InvalidSubcommand => {
            Some("an unknown command (bind, rotate, revoke, verify, get, list, review, audit, reveal)".to_owned())
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            // The validator's reason, unless it repeats any of the value (humantime quotes the
            // unit it could not read).
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            let why = std::error::Error::source(e).map(ToString::to_string).filter(|why| !shares_a_run(why, value));
            let valid = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => Some(format!("one of {}", v.join(", "))),
                _ => None,
            };
            Some(match why.or(valid) {
                Some(why) => format!("an invalid value for {arg}: {why}"),
                None => format!("an invalid value for {arg}"),
            })
        }
        _ => Some(format!("a usage error at {arg}")),
    };
    let Some(said) = said else {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
    };
    let _ = writeln!(
        std::io::stderr(),
        "vaultctl: {said} (the word itself is not shown: codes are read from the terminal or stdin, never from the \
         command line); see vaultctl --help"
    );
    ExitCode::from(2)
}

/// Whether `text` holds any 4 characters in a row of `value` (all of a shorter one).
fn shares_a_run(text: &str, value: &str) -> bool {
    let value: Vec<char> = value.chars().collect();
    // A shorter value, whole.
    value.windows(value.len().clamp(1, 4)).any(|w| text.contains(&w.iter().collect::<String>()))
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidArgument { .. } => 2,
        Error::NotFound => 3,
        Error::AlreadyBound | Error::Revoked | Error::VersionConflict { .. } => 4,
        Error::ProbeRejected { .. } => 5,
        Error::ProviderUnavailable { .. }
        | Error::VaultUnavailable { .. }
        | Error::RateLimited { .. }
        | Error::AuthThrottled { .. } => 6,
        Error::Unauthenticated { .. } | Error::PermissionDenied { .. } => 7,
        Error::Tampered => 8,
        Error::OutcomeUnknown { .. } => 9,
        Error::Other { code, .. } if *code == tonic::Code::Internal || *code == tonic::Code::DataLoss => 8,
        Error::Other { code, .. } if *code == tonic::Code::FailedPrecondition => 4,
        _ => 1,
    }
}

/// The token: `--token-file`, else `$VAULT_TOKEN`, else the file `$VAULT_TOKEN_FILE` names (the
/// library's `ConnectOptions::from_env` order).
fn token(cli: &Cli) -> Result<Option<SecretString>, Error> {
    match &cli.token_file {
        Some(path) => Ok(ConnectOptions::with_token_file(path)?.token),
        None => Ok(ConnectOptions::from_env()?.token),
    }
}

/// A revoke reason within the vault's limit, refused here as a bad argument (exit 2).
fn reason(s: &str) -> Result<String, String> {
    if s.trim().chars().count() > 500 {
        return Err("at most 500 characters".into());
    }
    Ok(s.to_owned())
}

async fn connect(cli: &Cli) -> Result<VaultClient, Error> {
    let tls = match &cli.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| Error::InvalidArgument {
                message: format!("cannot read the CA file {}: {e}", path.display()),
            })?;
            Some(TlsOptions { ca_pem: Some(pem), ..TlsOptions::default() })
        }
        None if cli.addr.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) => Some(TlsOptions::default()),
        None => None,
    };
    let options = ConnectOptions {
        token: token(cli)?,
        tls,
        timeout: Some(Duration::from_secs(cli.timeout)),
        connect_timeout: Some(Duration::from_secs(10)),
    };
    VaultClient::connect(cli.addr.clone(), options).await
}

/// The code from the terminal (no echo) or the first line of stdin.
fn read_code(prompt: &str) -> Result<SecretString, Error> {
    let bad = |message: String| Error::InvalidArgument { message };
    let code = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt).map_err(|e| bad(format!("cannot read the code: {e}")))?
    } else {
        read_stdin_line().map_err(|e| bad(format!("cannot read the code: {e}")))?
    };
    let code = code.trim_end_matches(['\r', '\n']).to_owned();
    if code.is_empty() {
        return Err(bad("no code given (type it at the prompt, or pipe it on stdin)".into()));
    }
    Ok(SecretString::from(code))
}

/// Longest code line read from stdin.
const MAX_LINE: usize = 4096;

/// One line of stdin, read a byte at a time so the rest stays for the next program, as the
/// shell's `read` leaves it (a script can pipe several codes to several commands).
fn read_stdin_line() -> std::io::Result<String> {
    let mut stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    // Sized once, so the code is never copied by a reallocation.
    let mut line = Vec::with_capacity(MAX_LINE);
    let mut byte = [0u8; 1];
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_LINE => {
                // Consume the rest of the line, so it cannot become the next program's input.
                while stdin.read(&mut byte).is_ok_and(|n| n == 1 && byte[0] != b'\n') {}
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the line is too long"));
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(line).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Writes to stdout; a closed or full stdout is an error (exit 1), not a panic.
fn emit(text: std::fmt::Arguments<'_>) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(text)
        .and_then(|()| out.flush())
        .map_err(|e| Error::Other { code: tonic::Code::Unknown, message: format!("cannot write the output: {e}") })
}

fn probe_line(what: &str, p: Option<&ProbeReport>) -> Result<(), Error> {
    match p {
        Some(p) => emit(format_args!("{what}: {} at {} — {}\n", outcome_name(p.outcome), p.server, p.hint)),
        None => Ok(()),
    }
}

fn outcome_name(o: ProbeOutcome) -> &'static str {
    o.as_str_name().trim_start_matches("PROBE_OUTCOME_")
}

/// Runs the command; the exit code (0, or verify's verdict).
async fn run(cli: Cli) -> Result<u8, Error> {
    let mut vault = connect(&cli).await?;
    match &cli.command {
        Command::Bind { mailbox, client } => {
            let code = read_code(&format!("auth code for {mailbox} / {client}: "))?;
            let r = vault.bind(mailbox, client, code).await?;
            emit(format_args!("bound {mailbox} / {client}, version {}\n", r.credential.version))?;
            probe_line("probe", Some(&r.probe))?;
        }
        Command::Rotate { mailbox, client, expected_version } => {
            let code = read_code(&format!("new auth code for {mailbox} / {client}: "))?;
            let r = vault.rotate(mailbox, client, code, *expected_version).await?;
            emit(format_args!("rotated {mailbox} / {client} to version {}\n", r.credential.version))?;
            probe_line("probe", Some(&r.probe))?;
            probe_line("previous code", r.previous_code_probe.as_ref())?;
        }
        Command::Revoke { mailbox, client, reason } => {
            let r = vault.revoke(mailbox, client, reason).await?;
            emit(format_args!("revoked {mailbox} / {client}\n"))?;
            probe_line("revoked code", r.probe.as_ref())?;
        }
        Command::Verify { mailbox, client } => {
            let r = vault.verify(mailbox, client).await?;
            probe_line("probe", Some(&r.probe))?;
            // The verdict is the exit code, so that `vaultctl verify ... || alert` works.
            let (code, verdict) = match r.probe.outcome {
                ProbeOutcome::Accepted => (0, ""),
                ProbeOutcome::Rejected => (5, "the provider refused the stored code"),
                _ => (6, "the probe could not tell whether the stored code works"),
            };
            if code != 0 {
                let _ = writeln!(std::io::stderr(), "vaultctl: {verdict}");
            }
            return Ok(code);
        }
        Command::Get { mailbox, client } => {
            let c = vault.get(mailbox, client).await?;
            emit(format_args!("{}", Table::credentials(std::slice::from_ref(&c)).render(cli.format)))?;
        }
        Command::List { mailbox, client, include_revoked, rejected, not_verified_for } => {
            let filter = CredentialFilter {
                mailbox: mailbox.clone(),
                client: client.clone(),
                include_revoked: *include_revoked,
                last_probe_outcome: rejected.then_some(ProbeOutcome::Rejected),
                not_verified_for: *not_verified_for,
            };
            emit(format_args!("{}", Table::credentials(&vault.list_all(&filter).await?).render(cli.format)))?;
        }
        Command::Review { unused_for, not_verified_for } => {
            review(&mut vault, cli.format, *unused_for, *not_verified_for).await?;
        }
        Command::Audit { mailbox, client, caller, limit } => {
            let filter = AuditFilter {
                mailbox: mailbox.clone(),
                client: client.clone(),
                caller: caller.clone(),
                ..Default::default()
            };
            emit(format_args!("{}", Table::audit(&vault.audit_all(&filter, *limit).await?).render(cli.format)))?;
        }
        Command::Reveal { mailbox, client } => {
            use secrecy::ExposeSecret as _;
            emit(format_args!("{}\n", vault.reveal(mailbox, client).await?.code.expose_secret()))?;
        }
    }
    Ok(0)
}

async fn review(
    vault: &mut VaultClient,
    format: Format,
    unused_for: Duration,
    unchecked: Duration,
) -> Result<(), Error> {
    let unused = vault.unused_all(&UnusedFilter { unused_for: Some(unused_for), ..Default::default() }).await?;
    let rejected = CredentialFilter { last_probe_outcome: Some(ProbeOutcome::Rejected), ..Default::default() };
    let rejected = vault.list_all(&rejected).await?;
    let stale = vault.list_all(&CredentialFilter { not_verified_for: Some(unchecked), ..Default::default() }).await?;
    let sections = [
        (format!("unused for {}", humantime::format_duration(unused_for)), Table::unused(&unused)),
        ("refused by the provider at the last probe".to_owned(), Table::credentials(&rejected)),
        (format!("not verified for {}", humantime::format_duration(unchecked)), Table::credentials(&stale)),
    ];
    emit(format_args!("{}", output::sections(&sections, format)))
}

//! The command line. Every flag also reads an environment variable; the passphrase is never a
//! flag value, only a file (`--passphrase-file`) or `$VAULT_PASSPHRASE`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::probe::ResolveOverride;

/// authcode-vault: keeps mail-provider client auth codes, one per (mailbox, client), encrypted
/// at rest and checked against the provider's IMAP server before every change.
#[derive(Debug, Parser)]
#[command(name = "vault-server", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter (tracing-subscriber syntax), e.g. `info` or `vault_server=debug`.
    #[arg(long, env = "VAULT_LOG", default_value = "info", global = true)]
    pub log_level: String,

    /// Log line format.
    #[arg(long, env = "VAULT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the RPC span's fields.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data dir: a new database and keyring sealed under the master passphrase.
    Init(InitArgs),
    /// Unlock a data dir and serve the gRPC API.
    Serve(Box<ServeArgs>),
    /// Manage caller tokens.
    Token(TokenArgs),
    /// Change the master passphrase.
    Passphrase(PassphraseCommandArgs),
    /// Write a consistent copy of the vault while it serves, or check one (`backup verify`).
    Backup(BackupArgs),
    /// Move a data dir's vault into an empty PostgreSQL database (--database), sealed as it is:
    /// codes, tokens and the audit trail. Needs the passphrase; refuses while a server uses the
    /// data dir.
    MigrateStore(MigrateStoreArgs),
    /// Make a new data dir from a backup; the target must be missing or empty.
    Restore {
        /// The data dir to create.
        #[arg(long, env = "VAULT_DATA_DIR", value_name = "DIR")]
        data_dir: PathBuf,
        /// The file `backup` wrote (or a pipe: `/dev/stdin`); not a directory, a device, or a
        /// copy of a data dir's vault.db (its latest changes may sit in a -wal beside it).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// The data dir to copy.
    #[arg(long, env = "VAULT_DATA_DIR", value_name = "DIR", required = true)]
    pub data_dir: Option<PathBuf>,
    /// Where to write the copy (mode 0600); it must not exist.
    #[arg(required = true)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Unlock a backup with the passphrase of its time and check that every active code opens.
    Verify {
        /// The backup file (never written to).
        file: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

#[derive(Debug, Args)]
pub struct PassphraseCommandArgs {
    #[command(subcommand)]
    pub command: PassphraseCommand,
}

#[derive(Debug, Subcommand)]
pub enum PassphraseCommand {
    /// Re-wrap the data keys under a new passphrase (fresh salt), in one transaction. Works while
    /// `serve` runs; the next start needs the new passphrase. Codes are not re-encrypted, so a
    /// copy of the data dir taken before still opens with the old passphrase.
    Change {
        #[arg(long, env = "VAULT_DATA_DIR", value_name = "DIR")]
        data_dir: PathBuf,
        /// The current passphrase (or $VAULT_PASSPHRASE).
        #[command(flatten)]
        passphrase: PassphraseArgs,
        /// File holding the new passphrase (at least 12 characters). Without it, the new
        /// passphrase is read from $VAULT_NEW_PASSPHRASE.
        #[arg(long, env = "VAULT_NEW_PASSPHRASE_FILE", value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token and print it alone on stdout, once. Needs the passphrase, and one role:
    /// --admin or --client ID.
    #[command(group(clap::ArgGroup::new("role").required(true).multiple(false).args(["admin", "client"])))]
    Create {
        #[arg(long, env = "VAULT_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        passphrase: PassphraseArgs,
        /// An admin token: every RPC except Reveal.
        #[arg(long)]
        admin: bool,
        /// A client token: Reveal and GetCredential for this client id's pairs only.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
    },
    /// List tokens: id, role, created, last used (Unix seconds), state. Never the tokens. With
    /// the passphrase, each row's MAC is checked (a row written by hand shows as `unreadable`);
    /// without it, rows not revoked show as `unchecked`.
    List {
        #[arg(long, env = "VAULT_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Revoke a token by id; a running server refuses it within a second.
    Revoke {
        #[arg(long, env = "VAULT_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        database: DatabaseArgs,
        /// The token id, as `token list` shows it (tk_...).
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct PassphraseArgs {
    /// File holding the master passphrase (trailing newline ignored). Without it, the
    /// passphrase is read from $VAULT_PASSPHRASE.
    #[arg(long, env = "VAULT_PASSPHRASE_FILE", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// A `--database` value as given: a URL may hold a password, so Debug never shows it, and
/// reading it never fails in clap (whose error would repeat it); it is checked after.
#[derive(Clone)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl([redacted])")
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Where the vault's rows live: `sqlite:` (vault.db in --data-dir) or a PostgreSQL URL,
    /// postgres://USER:PASSWORD@HOST:PORT/DB, that several replicas share. TLS to it when the
    /// URL says sslmode=require (the server's certificate and name are always verified). The
    /// URL is never printed or logged.
    #[arg(long, env = "VAULT_DATABASE", value_name = "URL", default_value = "sqlite:", hide_env_values = true)]
    pub database: DatabaseUrl,

    /// PEM CA certificate(s) to trust for the database's TLS, besides the public roots.
    #[arg(long, env = "VAULT_DATABASE_CA_FILE", value_name = "FILE")]
    pub database_ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MigrateStoreArgs {
    /// The data dir to move from (left as it is).
    #[arg(long, env = "VAULT_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Data dir to create (mode 0700); must not hold a vault yet, nor anything else. Not with a
    /// PostgreSQL --database.
    #[arg(long, env = "VAULT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data dir made by `init`. With --dev it defaults to ./vault-dev. Not with a PostgreSQL
    /// --database.
    #[arg(long, env = "VAULT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Quick start: use ./vault-dev (or --data-dir), generate a passphrase file (0600) in it
    /// and initialise on first run.
    #[arg(long, env = "VAULT_DEV")]
    pub dev: bool,

    #[command(flatten)]
    pub passphrase: PassphraseArgs,

    /// Address to listen on.
    #[arg(long, env = "VAULT_LISTEN", default_value = "127.0.0.1:50051", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// Serve plaintext gRPC on a non-loopback address. Without it (and without TLS), only
    /// loopback is allowed.
    #[arg(long, env = "VAULT_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,

    /// PEM certificate chain for TLS on the gRPC listener. SIGHUP reads it, --tls-key and
    /// --tls-client-ca again (for connections opened after).
    #[arg(long, env = "VAULT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "VAULT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA: require every client to present a certificate it signed (mTLS).
    #[arg(long, env = "VAULT_TLS_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// TOML file that adds providers or overrides fields of the built-in ones (see README).
    #[arg(long, env = "VAULT_PROVIDERS", value_name = "FILE")]
    pub providers: Option<PathBuf>,

    /// Connect probes for HOST:PORT to ADDR:PORT instead, still verifying the certificate
    /// for HOST (like curl --resolve). Repeatable; comma-separated in the env var. One that
    /// matches no server a provider is probed at (IMAP, or SMTP where it is probed) is warned
    /// about at start.
    #[arg(long, env = "VAULT_PROBE_RESOLVE", value_name = "HOST:PORT=ADDR:PORT", value_delimiter = ',')]
    pub probe_resolve: Vec<ResolveOverride>,

    /// Extra PEM CA certificates trusted for probes, besides the public roots.
    #[arg(long, env = "VAULT_PROBE_CA_FILE", value_name = "FILE")]
    pub probe_ca_file: Option<PathBuf>,

    /// Seconds to wait for a probe's TCP connect.
    #[arg(long, env = "VAULT_PROBE_CONNECT_TIMEOUT", default_value_t = 5, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub probe_connect_timeout: u64,

    /// Seconds a whole probe (connect, TLS, login, logout) may take.
    #[arg(long, env = "VAULT_PROBE_TIMEOUT", default_value_t = 15, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub probe_timeout: u64,

    /// Probes a mailbox may spend at once (token-bucket size), to keep providers from blocking it.
    #[arg(long, env = "VAULT_PROBE_BURST", default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub probe_burst: u32,

    /// Probes per hour a mailbox's budget refills by.
    #[arg(long, env = "VAULT_PROBE_PER_HOUR", default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub probe_per_hour: u32,

    /// Probes at once against one provider host.
    #[arg(long, env = "VAULT_PROBE_HOST_CONCURRENCY", default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub probe_host_concurrency: u32,

    /// Open gRPC connections at most. At the cap, the oldest connection that has not carried an
    /// authenticated call is closed to admit a new one; a new one is closed on accept only when
    /// no open connection is left to give way.
    #[arg(long, env = "VAULT_MAX_CONNECTIONS", default_value_t = 4096, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Open gRPC connections from one peer (an IPv4 address, or an IPv6 /64) at most; one over
    /// it is closed on accept. Behind a proxy that connects from one address, raise it to
    /// --max-connections.
    #[arg(long, env = "VAULT_MAX_CONNECTIONS_PER_PEER", default_value_t = 512, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_peer: u32,

    /// Seconds a new connection has to finish its TLS handshake (with TLS on) and send the
    /// HTTP/2 preface; silent or stalled connections are closed.
    #[arg(long, env = "VAULT_HANDSHAKE_TIMEOUT", default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub handshake_timeout: u64,

    /// Seconds of idle before TCP keepalive probes start on a connection.
    #[arg(long, env = "VAULT_TCP_KEEPALIVE", default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=7200))]
    pub tcp_keepalive: u64,

    /// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "VAULT_MAX_STREAMS_PER_CONNECTION", default_value_t = 128, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_connection: u32,

    /// Seconds of idle before the server pings a connection over HTTP/2.
    #[arg(long, env = "VAULT_HTTP2_KEEPALIVE_INTERVAL", default_value_t = 30, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http2_keepalive_interval: u64,

    /// Seconds to wait for a ping's answer before closing the connection.
    #[arg(long, env = "VAULT_HTTP2_KEEPALIVE_TIMEOUT", default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub http2_keepalive_timeout: u64,

    /// Authenticated vault RPCs handled at once; more wait. Calls without a valid token are
    /// refused before they take one.
    #[arg(long, env = "VAULT_MAX_CONCURRENT_RPCS", default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_rpcs: u32,

    /// Health and reflection calls (open without a token) handled at once; more are refused
    /// with RESOURCE_EXHAUSTED. Each, streams included, holds its slot until it ends and is cut
    /// after 10 s.
    #[arg(long, env = "VAULT_MAX_PUBLIC_RPCS", default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_public_rpcs: u32,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; give a loopback address
    /// unless the scraper is elsewhere). At most 8 connections, 10 s each; at the cap a new one
    /// closes the oldest that has not sent its request yet.
    #[arg(long, env = "VAULT_METRICS_LISTEN", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// Seconds between writes of coalesced Reveal usage (last-used times and aggregated audit
    /// events); written sooner once 100,000 (caller, pair) windows are pending. A crash loses the
    /// uses not yet written (a pair used only since keeps its older last-used time), never a
    /// credential.
    #[arg(long, env = "VAULT_USAGE_FLUSH_INTERVAL", default_value_t = 30, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub usage_flush_interval: u64,

    /// Also probe SMTP AUTH (implicit TLS) after IMAP, for every provider; per provider, set
    /// `smtp_probe = true` in the --providers file instead.
    #[arg(long, env = "VAULT_PROBE_SMTP")]
    pub probe_smtp: bool,

    /// Rotate the data key automatically once the active one is this old (e.g. `90d`, `12h`),
    /// as RotateDataKey does. Off by default.
    #[arg(long, env = "VAULT_DATA_KEY_MAX_AGE", value_name = "DURATION", value_parser = parse_max_age)]
    pub data_key_max_age: Option<std::time::Duration>,

    /// Re-probe every active code about once per DURATION (e.g. `24h`), spread over the period,
    /// so a code the provider stopped accepting is found before a sender fails with it; each
    /// re-probe is recorded and audited as a Verify by `system`, and leaves each mailbox half of
    /// its probe budget, rounded down, one probe at least. Off by default; 24h suits most vaults.
    #[arg(long, env = "VAULT_VERIFY_EVERY", value_name = "DURATION", value_parser = parse_max_age)]
    pub verify_every: Option<std::time::Duration>,

    /// Scheduled re-probes per second to one provider host at most (a decimal, e.g. 0.2).
    #[arg(long, env = "VAULT_VERIFY_RATE", default_value_t = 0.5, value_name = "PER_SEC",
          value_parser = parse_rate)]
    pub verify_rate: f64,
}

/// A rate between 0.001 and 100 per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number (write e.g. 0.5)"))?;
    if !(0.001..=100.0).contains(&rate) {
        return Err("must be between 0.001 and 100 per second".into());
    }
    Ok(rate)
}

/// A humantime duration of at least one second.
fn parse_max_age(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 90d, 12h or 30m)"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn token_create_names_both_roles_when_none_is_given() {
        let err = Cli::try_parse_from(["vault-server", "token", "create", "--data-dir", "d"]).unwrap_err().to_string();
        assert!(err.contains("--admin") && err.contains("--client"), "{err}");
        let both = ["vault-server", "token", "create", "--data-dir", "d", "--admin", "--client", "x"];
        assert!(Cli::try_parse_from(both).is_err());
        assert!(Cli::try_parse_from(["vault-server", "token", "create", "--data-dir", "d", "--client", "x"]).is_ok());
    }

    #[test]
    fn verify_flags_are_checked() {
        let serve = |extra: &[&str]| {
            let mut args = vec!["vault-server", "serve", "--dev"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        let Command::Serve(s) = serve(&["--verify-every", "24h", "--verify-rate", "0.2"]).unwrap().command else {
            panic!("not serve")
        };
        assert_eq!((s.verify_every, s.verify_rate), (Some(std::time::Duration::from_secs(86_400)), 0.2));
        let Command::Serve(s) = serve(&[]).unwrap().command else { panic!("not serve") };
        assert_eq!((s.verify_every, s.verify_rate), (None, 0.5), "off by default");
        for bad in [
            &["--verify-every", "0s"][..],
            &["--verify-rate", "0"],
            &["--verify-rate", "fast"],
            &["--verify-rate", "NaN"],
        ] {
            assert!(serve(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn serve_parses_a_data_dir_or_dev() {
        assert!(Cli::try_parse_from(["vault-server", "serve", "--dev"]).is_ok());
        let cli = Cli::try_parse_from([
            "vault-server",
            "serve",
            "--data-dir",
            "d",
            "--probe-resolve",
            "imap.sina.com:993=127.0.0.1:1",
            "--probe-resolve",
            "smtp.sina.com:465=127.0.0.1:2",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else { panic!("not serve") };
        assert_eq!(s.probe_resolve.len(), 2);
        assert_eq!(s.listen, "127.0.0.1:50051".parse().unwrap());
    }
}

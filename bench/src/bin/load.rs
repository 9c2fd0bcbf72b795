//! Fills an initialised data dir with bindings through the store API (no probes): pairs
//! `user000000@sina.com`/`sender`, ... with real sealed codes, bound over the past year.
//!
//! `vault-load --data-dir DIR --passphrase-file F --count 1000000`, or `--database URL` for a
//! PostgreSQL vault made by `init --database`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use vault_server::datadir;
use vault_server::ids::{ClientId, Mailbox};
use vault_server::outcome::ProbeOutcome;
use vault_server::secret::Passphrase;
use vault_server::store::{AuditEvent, CredentialStore, KeyMaterialStore, NewBinding, PgStore, StoredCode};

/// Bulk-load bindings into a data dir.
#[derive(Debug, Parser)]
struct Args {
    /// An initialised data dir.
    #[arg(long, required_unless_present = "database")]
    data_dir: Option<PathBuf>,
    /// Or an initialised PostgreSQL database.
    #[arg(long, conflicts_with = "data_dir")]
    database: Option<String>,
    /// Its passphrase file.
    #[arg(long)]
    passphrase_file: PathBuf,
    /// How many pairs to add.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Rows per transaction.
    #[arg(long, default_value_t = 20_000)]
    batch: u32,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Where the rows go: the SQLite engine (synchronous) or PostgreSQL (on a runtime).
enum Target {
    Sqlite(vault_server::store::SqliteStore),
    Postgres(tokio::runtime::Runtime, vault_server::store::PgStore),
}

impl Target {
    fn import(&self, rows: Vec<NewBinding>, audit: AuditEvent) -> Result<(), Box<dyn std::error::Error>> {
        match self {
            Self::Sqlite(store) => store.sync().import(&rows, &audit)?,
            Self::Postgres(runtime, store) => runtime.block_on(CredentialStore::import(store, rows, audit))?,
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let passphrase = Passphrase::new(&std::fs::read_to_string(&args.passphrase_file)?);
    let (target, keyring) = match (&args.data_dir, &args.database) {
        (Some(dir), _) => {
            let (store, keyring) = datadir::unlock(dir, &passphrase)?;
            (Target::Sqlite(store), keyring)
        }
        (None, Some(url)) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let store = runtime.block_on(PgStore::connect(url, None))?;
            let material = runtime.block_on(KeyMaterialStore::unlock_material(&store))?;
            let (keyring, _) = material.open(&passphrase)?;
            (Target::Postgres(runtime, store), keyring)
        }
        (None, None) => return Err("--data-dir or --database".into()),
    };
    let now = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
    let started = Instant::now();
    let client = ClientId::parse("sender")?;
    let mut first = 0;
    while first < args.count {
        let last = (first + args.batch).min(args.count);
        let mailboxes: Vec<Mailbox> =
            (first..last).map(|i| Mailbox::parse(format!("user{i:06}@sina.com"))).collect::<Result<_, _>>()?;
        let rows: Vec<NewBinding> = mailboxes
            .into_iter()
            .zip(first..last)
            .map(|(m, i)| {
                let code = format!("CODE{i:012}");
                let (key_id, generation, sealed) = keyring.seal_code(m.as_str(), client.as_str(), 1, code.as_bytes());
                NewBinding {
                    mailbox: m,
                    client: client.clone(),
                    provider: "sina".into(),
                    code: StoredCode { key_id, generation: Some(generation), sealed },
                    now: now - i64::from(i % 365) * DAY_MS - 1000,
                    probe_outcome: ProbeOutcome::Accepted,
                }
            })
            .collect();
        let audit = AuditEvent {
            at: now,
            caller: "vault-load".into(),
            caller_role: "admin".into(),
            rpc: "Import".into(),
            mailbox: String::new(),
            client: client.as_str().to_owned(),
            outcome: "OK".into(),
            probe_outcome: None,
            count: u64::from(last - first),
            first_at: now,
            reason: String::new(),
        };
        target.import(rows, audit)?;
        first = last;
    }
    if let Target::Sqlite(store) = &target {
        store.sync().checkpoint()?;
    }
    println!("loaded {} bindings in {:.1} s", args.count, started.elapsed().as_secs_f64());
    Ok(())
}

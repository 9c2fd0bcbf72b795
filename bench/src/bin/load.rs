//! Fills an initialised data dir with bindings through the store API (no probes): pairs
//! `user000000@sina.com`/`sender`, ... with real sealed codes, bound over the past year.
//!
//! `vault-load --data-dir DIR --passphrase-file F --count 1000000`

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use vault_server::datadir;
use vault_server::ids::{ClientId, Mailbox};
use vault_server::outcome::ProbeOutcome;
use vault_server::secret::Passphrase;
use vault_server::store::{AuditEvent, NewBinding, StoredCode};

/// Bulk-load bindings into a data dir.
#[derive(Debug, Parser)]
struct Args {
    /// An initialised data dir.
    #[arg(long)]
    data_dir: PathBuf,
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let passphrase = Passphrase::new(&std::fs::read_to_string(&args.passphrase_file)?);
    let (store, keyring) = datadir::unlock(&args.data_dir, &passphrase)?;
    // The synchronous engine: this tool runs outside any async runtime.
    let store = store.sync();
    let now = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
    let started = Instant::now();
    let client = ClientId::parse("sender")?;
    let mut first = 0;
    while first < args.count {
        let last = (first + args.batch).min(args.count);
        let mailboxes: Vec<Mailbox> =
            (first..last).map(|i| Mailbox::parse(&format!("user{i:06}@sina.com"))).collect::<Result<_, _>>()?;
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
        };
        store.import(&rows, &audit)?;
        first = last;
    }
    store.checkpoint()?;
    println!("loaded {} bindings in {:.1} s", args.count, started.elapsed().as_secs_f64());
    Ok(())
}

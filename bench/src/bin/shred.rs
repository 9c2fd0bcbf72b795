//! What the "no live copy" promise costs a write: Rotate (commit, then WAL checkpoint and
//! truncate) against Verify's probe record (the same one-row UPDATE plus audit row, no
//! truncate), interleaved on one SQLite file. Prints p50/p99 of each, in milliseconds.
//!
//! `shred [COUNT]` (default 300) in a scratch dir; needs no server and no passphrase.

use std::time::{Duration, Instant};

use vault_server::crypto::{KdfParams, Key, Keyring, Salt};
use vault_server::ids::{ClientId, Mailbox};
use vault_server::outcome::ProbeOutcome;
use vault_server::store::{AuditEvent, NewBinding, ProbeRecord, RotateChange, SqliteStore, StoredCode, UnlockMaterial};

fn event(rpc: &str, mailbox: &str, at: i64) -> AuditEvent {
    AuditEvent {
        at,
        caller: "shred-bench".into(),
        caller_role: "admin".into(),
        rpc: rpc.into(),
        mailbox: mailbox.into(),
        client: "sender".into(),
        outcome: "OK".into(),
        probe_outcome: None,
        count: 1,
        first_at: at,
        reason: String::new(),
    }
}

fn millis(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| {
        // Index of the q-quantile in a sorted, non-empty list.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u32 = std::env::args().nth(1).map_or(Ok(300), |c| c.parse())?;
    let dir = tempfile_dir()?;
    let (ring, wrapped) = Keyring::generate(&Key::random());
    let material = UnlockMaterial { salt: Salt([5; 16]), params: KdfParams::FLOOR, keys: vec![wrapped] };
    let store = SqliteStore::create(&dir.join("vault.db"), &material, 0)?;
    let db = store.sync();
    let mailbox = "shred@sina.com";
    let (key_id, generation, sealed) = ring.seal_code(mailbox, "sender", 1, b"SHREDcode0000001");
    let new = NewBinding {
        mailbox: Mailbox::parse(mailbox)?,
        client: ClientId::parse("sender")?,
        provider: "sina".into(),
        code: StoredCode { key_id, generation: Some(generation), sealed },
        now: 1,
        probe_outcome: ProbeOutcome::Accepted,
    };
    db.bind(&new, &event("Bind", mailbox, 1), None)?;
    let (mut rotate, mut record) = (Vec::new(), Vec::new());
    for i in 1..=u64::from(count) {
        let at = i64::try_from(i)?;
        let (key_id, generation, sealed) = ring.seal_code(mailbox, "sender", i + 1, b"SHREDcode0000001");
        let change = RotateChange {
            mailbox: mailbox.into(),
            client: "sender".into(),
            from_version: i,
            code: StoredCode { key_id, generation: Some(generation), sealed },
            now: at,
        };
        let started = Instant::now();
        db.rotate(&change, &event("Rotate", mailbox, at), None)?;
        rotate.push(started.elapsed());
        let probe = ProbeRecord {
            mailbox: mailbox.into(),
            client: "sender".into(),
            version: i + 1,
            outcome: ProbeOutcome::Accepted,
            now: at,
        };
        let started = Instant::now();
        db.record_probe(&probe, &event("Verify", mailbox, at))?;
        record.push(started.elapsed());
    }
    let (r50, r99) = millis(rotate);
    let (v50, v99) = millis(record);
    println!(
        "{{\"count\":{count},\"rotate_p50_ms\":{r50:.3},\"rotate_p99_ms\":{r99:.3},\"record_p50_ms\":{v50:.3},\"record_p99_ms\":{v99:.3}}}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A fresh scratch dir under the system temp dir.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("vault-shred-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

//! The write path: Bind and Rotate against a vault whose provider (a local Dovecot) answers at
//! once. Splits each call's latency into probe time (as the vault's probe reports measured it)
//! and server time (the rest: validation, budget, sealing, the SQLite commit, the response).
//!
//! `writes ENDPOINT ADMIN_TOKEN COUNT` binds `w000000@sina.com`.. with `WRITEaaaa00000000`-style
//! codes, then rotates each to its second code; prints one JSON object.

use std::time::{Duration, Instant};

use vault_client::{ConnectOptions, SecretString, VaultClient};

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| {
        // Index of the q-quantile in a sorted, non-empty list.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

/// The two codes of pair `i`: 16 letters/digits, as Sina expects.
pub fn codes(i: u32) -> (String, String) {
    (format!("WRITEa{i:010}"), format!("WRITEb{i:010}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: writes ENDPOINT ADMIN_TOKEN COUNT";
    let endpoint = args.next().ok_or(usage)?;
    let token = SecretString::from(args.next().ok_or(usage)?);
    let count: u32 = args.next().ok_or(usage)?.parse()?;
    let mut vault = VaultClient::connect(endpoint, ConnectOptions::with_token(token)).await?;
    let (mut bind, mut rotate) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for i in 0..count {
        let mailbox = format!("w{i:06}@sina.com");
        let (first, second) = codes(i);
        let t = Instant::now();
        let r = vault.bind(&mailbox, "sender", SecretString::from(first)).await?;
        let total = t.elapsed();
        let probe = r.probe.latency;
        bind.0.push(probe);
        bind.1.push(total.saturating_sub(probe));
        let t = Instant::now();
        let r = vault.rotate(&mailbox, "sender", SecretString::from(second), 1).await?;
        let total = t.elapsed();
        let probe = r.probe.latency + r.previous_code_probe.map_or(Duration::ZERO, |p| p.latency);
        rotate.0.push(probe);
        rotate.1.push(total.saturating_sub(probe));
    }
    let mut fields = vec![format!("\"count\":{count}")];
    for (name, samples) in
        [("bind_probe", bind.0), ("bind_server", bind.1), ("rotate_probe", rotate.0), ("rotate_server", rotate.1)]
    {
        let (p50, p99) = percentiles(samples);
        fields.push(format!("\"{name}_p50\":{p50:.3},\"{name}_p99\":{p99:.3}"));
    }
    println!("{{{}}}", fields.join(","));
    Ok(())
}

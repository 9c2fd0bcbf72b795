//! The whole quarterly review, walked page by page as an admin's tool would (`vault-client`'s
//! `list_unused`, the server's default page): each page's latency, so that a page deep in the
//! review is measured too, not only the first. Prints one JSON line: pages, clients, mean, p50,
//! p99 and max page latency in ms, and the whole walk in seconds.
//!
//! `review http://127.0.0.1:50051 --token-file T`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use vault_client::{ConnectOptions, UnusedFilter, VaultClient};

/// Walks every page of ListUnusedClients.
#[derive(Debug, Parser)]
struct Args {
    /// The vault's address.
    endpoint: String,
    /// An admin token.
    #[arg(long)]
    token_file: PathBuf,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut vault = VaultClient::connect(&args.endpoint, ConnectOptions::with_token_file(&args.token_file)?).await?;
    let filter = UnusedFilter::default();
    let (started, mut token, mut times, mut clients) = (Instant::now(), String::new(), Vec::new(), 0usize);
    loop {
        let asked = Instant::now();
        let page = vault.list_unused(&filter, &token).await?;
        times.push(asked.elapsed());
        clients += page.items.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let total = started.elapsed();
    let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(u32::MAX).max(1);
    times.sort_unstable();
    // The page at `per_mille` of the sorted latencies.
    let at = |per_mille: usize| {
        times.get((times.len().saturating_sub(1) * per_mille).div_ceil(1000)).copied().unwrap_or_default()
    };
    println!(
        "{{\"pages\": {}, \"clients\": {clients}, \"mean_ms\": {:.3}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}, \"total_s\": {:.3}}}",
        times.len(),
        ms(mean),
        ms(at(500)),
        ms(at(990)),
        ms(times.last().copied().unwrap_or_default()),
        total.as_secs_f64()
    );
    Ok(())
}

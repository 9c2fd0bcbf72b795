//! Reveal load over many pairs, as real senders make it: tonic clients, `--connections` HTTP/2
//! connections with `--streams` calls in flight on each, every call for a pair drawn from the
//! bindings `bench/src/bin/load.rs` made (`user{i:06}@sina.com` / `sender`, code
//! `CODE{i:012}`): uniformly, Zipf-distributed (s = 1), or always the first (`one`, the
//! single-key case h2load measures). Every answer is checked against the pair's code. Prints one
//! JSON line: requests, errors, wrong codes, req/s, p50/p99 in ms.
//!
//! `spread http://127.0.0.1:50051 --token-file T --count 1000000 --distribution zipf`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;
use vault_bench::proto::RevealRequest;
use vault_bench::proto::auth_code_vault_client::AuthCodeVaultClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Distribution {
    Uniform,
    Zipf,
    One,
}

/// Reveal load spread over the loaded bindings.
#[derive(Debug, Parser)]
struct Args {
    /// The vault's address.
    endpoint: String,
    /// A client token for `sender`.
    #[arg(long)]
    token_file: PathBuf,
    /// How many bindings were loaded.
    #[arg(long)]
    count: u32,
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// How long to measure, after a one-second warm-up.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
}

/// xorshift64*: cheap, and good enough to spread keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1): 53 random bits over 2^53.
    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / 9_007_199_254_740_992.0
    }
}

/// Draws pair indexes.
enum Draw {
    Uniform(u32),
    /// Cumulative Zipf weights of ranks 1..=n, normalised to 1.
    Zipf(Arc<Vec<f64>>),
    One,
}

impl Draw {
    fn new(distribution: Distribution, count: u32) -> Self {
        match distribution {
            Distribution::Uniform => Self::Uniform(count),
            Distribution::One => Self::One,
            Distribution::Zipf => {
                let mut cdf = Vec::with_capacity(count as usize);
                let mut sum = 0.0;
                for rank in 1..=count {
                    sum += 1.0 / f64::from(rank);
                    cdf.push(sum);
                }
                for c in &mut cdf {
                    *c /= sum;
                }
                Self::Zipf(Arc::new(cdf))
            }
        }
    }

    fn pick(&self, rng: &mut Rng) -> u32 {
        match self {
            Self::Uniform(n) => u32::try_from(rng.next() % u64::from(*n)).unwrap_or(0),
            Self::Zipf(cdf) => {
                let u = rng.unit();
                u32::try_from(cdf.partition_point(|c| *c < u).min(cdf.len() - 1)).unwrap_or(0)
            }
            Self::One => 0,
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    wrong: u64,
    /// The first failure's status, to say what went wrong.
    first_error: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)?;
    let bearer: MetadataValue<_> = format!("Bearer {}", token.trim()).parse()?;
    let draw = Arc::new(Draw::new(args.distribution, args.count));
    let warm_up = Instant::now() + Duration::from_secs(1);
    let end = warm_up + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        // One HTTP/2 connection each, shared by its streams.
        let channel = Endpoint::from_shared(args.endpoint.clone())?.connect().await?;
        for s in 0..args.streams {
            let mut client = AuthCodeVaultClient::new(channel.clone());
            let (draw, bearer) = (draw.clone(), bearer.clone());
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((c * 1000 + s + 1) as u64));
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return tally;
                    }
                    let i = draw.pick(&mut rng);
                    let mut request = tonic::Request::new(RevealRequest {
                        mailbox: format!("user{i:06}@sina.com"),
                        client: "sender".into(),
                    });
                    request.metadata_mut().insert("authorization", bearer.clone());
                    let answer = client.reveal(request).await;
                    if started < warm_up {
                        continue;
                    }
                    match answer {
                        Ok(r) if r.get_ref().auth_code == format!("CODE{i:012}") => {
                            let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                            tally.latencies_us.push(us);
                        }
                        Ok(_) => tally.wrong += 1,
                        Err(status) => {
                            tally.errors += 1;
                            let what = || format!("{:?}: {}", status.code(), status.message());
                            tally.first_error.get_or_insert_with(what);
                        }
                    }
                }
            }));
        }
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await?;
        all.latencies_us.extend(t.latencies_us);
        all.errors += t.errors;
        all.wrong += t.wrong;
        all.first_error = all.first_error.or(t.first_error);
    }
    all.latencies_us.sort_unstable();
    let percentile = |p: f64| {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let at = ((all.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(all.latencies_us[at]) / 1000.0
    };
    let ok = all.latencies_us.len() as u64;
    #[allow(clippy::cast_precision_loss)]
    let rps = ok as f64 / args.seconds;
    let first_error = all.first_error.unwrap_or_default().replace(['"', '\\'], "'");
    println!(
        "{{\"requests\":{},\"errors\":{},\"wrong\":{},\"rps\":{rps:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"first_error\":\"{first_error}\"}}",
        ok + all.errors + all.wrong,
        all.errors,
        all.wrong,
        percentile(0.5),
        percentile(0.99)
    );
    Ok(())
}

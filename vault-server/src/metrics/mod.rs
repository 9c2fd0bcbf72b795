//! Prometheus metrics: RPCs by method and code (count and latency histogram), probe outcomes by
//! provider, and bindings by state (read at scrape time). Text exposition format 0.0.4.

mod http;

pub use http::serve_metrics;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0];

/// Methods counted by name; anything else is counted as `other`.
const METHODS: [&str; 12] = [
    "Bind",
    "Rotate",
    "Revoke",
    "Verify",
    "Reveal",
    "GetCredential",
    "ListCredentials",
    "ListUnusedClients",
    "ListAuditEvents",
    "Check",
    "ServerReflectionInfo",
    "other",
];

/// gRPC code names, indexed by code.
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Lock-free, so that counting costs the Reveal hot path a few atomic adds.
#[derive(Debug, Default)]
struct Histogram {
    count: AtomicU64,
    sum_nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

#[derive(Debug)]
pub struct Metrics {
    rpcs: Vec<Histogram>,
    probes: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rpcs: (0..METHODS.len() * CODES.len()).map(|_| Histogram::default()).collect(),
            probes: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// One finished RPC: method name (e.g. `Bind`), gRPC code number, latency.
    pub fn observe_rpc(&self, method: &str, code: usize, latency: Duration) {
        let m = METHODS.iter().position(|n| *n == method).unwrap_or(METHODS.len() - 1);
        let Some(h) = self.rpcs.get(m * CODES.len() + code.min(CODES.len() - 1)) else { return };
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos.fetch_add(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One probe outcome for a provider id.
    pub fn observe_probe(&self, provider: &str, outcome: &'static str) {
        *lock(&self.probes).entry((provider.to_owned(), outcome)).or_default() += 1;
    }

    /// The exposition text; `bindings` are (state, count) pairs read by the caller.
    pub fn render(&self, bindings: &[(&str, u64)]) -> String {
        let mut out = String::new();
        let seen: Vec<(&str, &str, &Histogram)> = self
            .rpcs
            .iter()
            .enumerate()
            .filter(|(_, h)| h.count.load(Ordering::Relaxed) > 0)
            .map(|(i, h)| (METHODS[i / CODES.len()], CODES[i % CODES.len()], h))
            .collect();
        out.push_str("# HELP vault_rpc_requests_total RPCs handled, by method and gRPC code.\n");
        out.push_str("# TYPE vault_rpc_requests_total counter\n");
        for (method, code, h) in &seen {
            let n = h.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "vault_rpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP vault_rpc_duration_seconds RPC latency, by method and gRPC code.\n");
        out.push_str("# TYPE vault_rpc_duration_seconds histogram\n");
        for (method, code, h) in &seen {
            let labels = format!("method=\"{method}\",code=\"{code}\"");
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(&h.buckets) {
                cumulative += n.load(Ordering::Relaxed);
                let _ = writeln!(out, "vault_rpc_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let count = h.count.load(Ordering::Relaxed);
            // Precision loss is irrelevant at nanosecond sums.
            #[allow(clippy::cast_precision_loss)]
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "vault_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "vault_rpc_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "vault_rpc_duration_seconds_count{{{labels}}} {count}");
        }
        out.push_str("# HELP vault_probes_total Login probes, by provider and outcome.\n");
        out.push_str("# TYPE vault_probes_total counter\n");
        for ((provider, outcome), n) in lock(&self.probes).iter() {
            let _ = writeln!(out, "vault_probes_total{{provider=\"{}\",outcome=\"{outcome}\"}} {n}", label(provider));
        }
        out.push_str("# HELP vault_bindings Bindings, by state.\n");
        out.push_str("# TYPE vault_bindings gauge\n");
        for (state, n) in bindings {
            let _ = writeln!(out, "vault_bindings{{state=\"{state}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe_rpc("Bind", 0, Duration::from_millis(3));
        m.observe_rpc("Bind", 0, Duration::from_millis(30));
        m.observe_rpc("Nonsense", 99, Duration::from_millis(1));
        m.observe_probe("sina", "ACCEPTED");
        let text = m.render(&[("active", 2), ("revoked", 0)]);
        assert!(text.contains("vault_rpc_requests_total{method=\"Bind\",code=\"OK\"} 2"), "{text}");
        assert!(text.contains("vault_rpc_duration_seconds_bucket{method=\"Bind\",code=\"OK\",le=\"0.005\"} 1"));
        assert!(text.contains("vault_rpc_duration_seconds_bucket{method=\"Bind\",code=\"OK\",le=\"0.05\"} 2"));
        assert!(text.contains("vault_probes_total{provider=\"sina\",outcome=\"ACCEPTED\"} 1"));
        assert!(text.contains("vault_bindings{state=\"active\"} 2"));
        assert!(text.contains("vault_rpc_requests_total{method=\"other\",code=\"UNAUTHENTICATED\"} 1"), "{text}");
    }
}

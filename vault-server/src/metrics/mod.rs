//! Prometheus metrics: RPCs by method and code (count and latency histogram), probe outcomes by
//! provider, and bindings by state (read at scrape time). Text exposition format 0.0.4.

mod http;

pub use http::serve_metrics;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Debug, Default)]
pub struct Metrics {
    rpcs: Mutex<BTreeMap<(String, String), Histogram>>,
    probes: Mutex<BTreeMap<(String, &'static str), u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// One finished RPC: method name (e.g. `Bind`), gRPC code name (e.g. `OK`), latency.
    pub fn observe_rpc(&self, method: &str, code: &str, latency: Duration) {
        let secs = latency.as_secs_f64();
        let mut rpcs = lock(&self.rpcs);
        let h = rpcs.entry((method.to_owned(), code.to_owned())).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
    }

    /// One probe outcome for a provider id.
    pub fn observe_probe(&self, provider: &str, outcome: &'static str) {
        *lock(&self.probes).entry((provider.to_owned(), outcome)).or_default() += 1;
    }

    /// The exposition text; `bindings` are (state, count) pairs read by the caller.
    pub fn render(&self, bindings: &[(&str, u64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP vault_rpc_requests_total RPCs handled, by method and gRPC code.\n");
        out.push_str("# TYPE vault_rpc_requests_total counter\n");
        let rpcs = lock(&self.rpcs).clone();
        for ((method, code), h) in &rpcs {
            let _ = writeln!(
                out,
                "vault_rpc_requests_total{{method=\"{}\",code=\"{}\"}} {}",
                label(method),
                label(code),
                h.count
            );
        }
        out.push_str("# HELP vault_rpc_duration_seconds RPC latency, by method and gRPC code.\n");
        out.push_str("# TYPE vault_rpc_duration_seconds histogram\n");
        for ((method, code), h) in &rpcs {
            let labels = format!("method=\"{}\",code=\"{}\"", label(method), label(code));
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(out, "vault_rpc_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "vault_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "vault_rpc_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "vault_rpc_duration_seconds_count{{{labels}}} {}", h.count);
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
        m.observe_rpc("Bind", "OK", Duration::from_millis(3));
        m.observe_rpc("Bind", "OK", Duration::from_millis(30));
        m.observe_probe("sina", "ACCEPTED");
        let text = m.render(&[("active", 2), ("revoked", 0)]);
        assert!(text.contains("vault_rpc_requests_total{method=\"Bind\",code=\"OK\"} 2"), "{text}");
        assert!(text.contains("vault_rpc_duration_seconds_bucket{method=\"Bind\",code=\"OK\",le=\"0.005\"} 1"));
        assert!(text.contains("vault_rpc_duration_seconds_bucket{method=\"Bind\",code=\"OK\",le=\"0.05\"} 2"));
        assert!(text.contains("vault_probes_total{provider=\"sina\",outcome=\"ACCEPTED\"} 1"));
        assert!(text.contains("vault_bindings{state=\"active\"} 2"));
    }
}

//! Prometheus metrics: RPCs by method and code (count and latency histogram), probe outcomes by
//! provider, authentication failures by reason, refused connections, and bindings by state (read
//! at scrape time). Counting is a few relaxed atomic adds (the Reveal hot path pays nothing
//! more); `prometheus-client` encodes a snapshot at scrape time, in the text format 0.0.4.

mod http;

pub use http::{MetricsLimits, serve_metrics};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Latency bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0];

/// Methods counted by name; anything else is counted as `other`.
const METHODS: [&str; 13] = [
    "Bind",
    "Rotate",
    "Revoke",
    "Verify",
    "Reveal",
    "GetCredential",
    "ListCredentials",
    "ListUnusedClients",
    "ListAuditEvents",
    "RotateDataKey",
    "Check",
    "ServerReflectionInfo",
    "other",
];

/// gRPC code names, indexed by code; a code outside them counts as UNKNOWN.
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
/// Where a code outside the 17 defined ones is counted: as UNKNOWN, as gRPC itself does.
const UNKNOWN_CODE: usize = 2;

/// Authentication failure reasons counted (the ErrorInfo reasons of `AuthError`).
const AUTH_REASONS: [&str; 8] = [
    "MISSING_TOKEN",
    "MALFORMED_TOKEN",
    "INVALID_TOKEN",
    "AUTH_THROTTLED",
    "TOKENS_UNAVAILABLE",
    "ADMIN_REQUIRED",
    "CLIENT_TOKEN_REQUIRED",
    "WRONG_CLIENT",
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
    auth_failures: [AtomicU64; AUTH_REASONS.len()],
    connections_refused: AtomicU64,
    /// Connections without a token closed at the cap to admit a new one.
    connections_given_way: AtomicU64,
    /// Data-key rotations finished and stopped.
    rotations: [AtomicU64; 2],
    /// Codes re-sealed and token rows re-keyed by rotations.
    rekeyed: [AtomicU64; 2],
    /// Scheduled verifications by outcome (or SKIPPED_BUDGET, SKIPPED_ERROR).
    sweeps: Mutex<BTreeMap<&'static str, u64>>,
    /// Codes due for a scheduled verification at the sweep's last pass (at most one batch).
    sweep_due: AtomicU64,
    /// 1 while a destruction in the live files is owed (see `Vault::finish_destruction`).
    destruction_owed: AtomicU64,
}

/// What a scrape reads from the store.
#[derive(Debug, Clone, Default)]
pub struct Scraped {
    /// (state, count).
    pub bindings: Vec<(&'static str, u64)>,
    /// (key id, age in seconds), oldest first; the last is the active key.
    pub data_keys: Vec<(u32, u64)>,
    /// Active bindings by their last probe's outcome (`NONE`: never probed).
    pub by_outcome: Vec<(&'static str, u64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rpcs: (0..METHODS.len() * CODES.len()).map(|_| Histogram::default()).collect(),
            probes: Mutex::default(),
            auth_failures: Default::default(),
            connections_refused: AtomicU64::new(0),
            connections_given_way: AtomicU64::new(0),
            rotations: Default::default(),
            rekeyed: Default::default(),
            sweeps: Mutex::default(),
            sweep_due: AtomicU64::new(0),
            destruction_owed: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// One finished RPC: method name (e.g. `Bind`), gRPC code number, latency.
    pub fn observe_rpc(&self, method: &str, code: usize, latency: Duration) {
        let m = METHODS.iter().position(|n| *n == method).unwrap_or(METHODS.len() - 1);
        let code = if code < CODES.len() { code } else { UNKNOWN_CODE };
        let Some(h) = self.rpcs.get(m * CODES.len() + code) else { return };
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

    /// One call refused before it reached a handler, by its ErrorInfo reason.
    pub fn observe_auth_failure(&self, reason: &str) {
        if let Some(i) = AUTH_REASONS.iter().position(|r| *r == reason) {
            self.auth_failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One connection closed on accept: over its peer's cap, or at the cap with none to give way.
    pub fn observe_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// One connection that had not authenticated, chosen at the cap to close for a new one.
    pub fn observe_connection_given_way(&self) {
        self.connections_given_way.fetch_add(1, Ordering::Relaxed);
    }

    /// One data-key rotation that finished (`true`) or stopped.
    pub fn observe_rotation(&self, finished: bool) {
        self.rotations[usize::from(!finished)].fetch_add(1, Ordering::Relaxed);
    }

    /// Rows moved to a new data key: `kind` is `code` or `token`.
    pub fn observe_rekeyed(&self, kind: &str, rows: usize) {
        let i = usize::from(kind != "code");
        self.rekeyed[i].fetch_add(u64::try_from(rows).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// One scheduled verification: its probe outcome, or why it was skipped.
    pub fn observe_sweep(&self, outcome: &'static str) {
        *lock(&self.sweeps).entry(outcome).or_default() += 1;
    }

    /// Whether a destruction in the live files is owed.
    pub fn observe_destruction_owed(&self, owed: bool) {
        self.destruction_owed.store(u64::from(owed), Ordering::Relaxed);
    }

    /// Codes the sweep found due at its last pass.
    pub fn observe_sweep_due(&self, due: usize) {
        self.sweep_due.store(u64::try_from(due).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The exposition text (Prometheus text format 0.0.4), with what the caller read from the
    /// store.
    pub fn render(self: &Arc<Self>, scraped: &Scraped) -> Result<String, std::fmt::Error> {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Scrape { metrics: self.clone(), scraped: scraped.clone() }));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// A snapshot of [`Metrics`] for one scrape.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    scraped: Scraped,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let seen: Vec<(&str, &str, &Histogram)> = m
            .rpcs
            .iter()
            .enumerate()
            .filter(|(_, h)| h.count.load(Ordering::Relaxed) > 0)
            .map(|(i, h)| (METHODS[i / CODES.len()], CODES[i % CODES.len()], h))
            .collect();
        let mut family = encoder.encode_descriptor(
            "vault_rpc_requests",
            "RPCs handled, by method and gRPC code.",
            None,
            MetricType::Counter,
        )?;
        for (method, code, h) in &seen {
            let labels = [("method", *method), ("code", *code)];
            ConstCounter::new(h.count.load(Ordering::Relaxed)).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "vault_rpc_duration_seconds",
            "RPC latency, by method and gRPC code.",
            None,
            MetricType::Histogram,
        )?;
        for (method, code, h) in &seen {
            let labels = [("method", *method), ("code", *code)];
            let mut buckets: Vec<(f64, u64)> =
                BUCKETS.iter().zip(&h.buckets).map(|(b, n)| (*b, n.load(Ordering::Relaxed))).collect();
            let count = h.count.load(Ordering::Relaxed);
            let in_buckets: u64 = buckets.iter().map(|(_, n)| n).sum();
            buckets.push((f64::INFINITY, count.saturating_sub(in_buckets)));
            // Precision loss is irrelevant at nanosecond sums.
            #[allow(clippy::cast_precision_loss)]
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "vault_probes",
            "Login probes, by provider and outcome.",
            None,
            MetricType::Counter,
        )?;
        for ((provider, outcome), n) in lock(&m.probes).iter() {
            let labels = [("provider", provider.as_str()), ("outcome", *outcome)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "vault_auth_failures",
            "Calls refused before a handler ran, by reason (AUTH_THROTTLED: a peer that kept failing).",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in AUTH_REASONS.iter().zip(&m.auth_failures) {
            ConstCounter::new(n.load(Ordering::Relaxed)).encode(family.encode_family(&[("reason", *reason)])?)?;
        }
        ConstCounter::new(m.connections_refused.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
            "vault_connections_refused",
            "Connections closed on accept: over their peer's cap, or at the cap with no connection left to give way.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(m.connections_given_way.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
            "vault_connections_given_way",
            "Connections that had not authenticated, chosen at the cap to close for a new one.",
            None,
            MetricType::Counter,
        )?)?;
        let mut family = encoder.encode_descriptor("vault_bindings", "Bindings, by state.", None, MetricType::Gauge)?;
        for (state, n) in &self.scraped.bindings {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(family.encode_family(&[("state", *state)])?)?;
        }
        self.encode_keys(&mut encoder)?;
        self.encode_verification(&mut encoder)
    }
}

impl Scrape {
    fn encode_verification(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "vault_credentials_by_last_probe",
            "Active bindings by their last probe's outcome (NONE: never probed); REJECTED ones no longer work.",
            None,
            MetricType::Gauge,
        )?;
        for (outcome, n) in &self.scraped.by_outcome {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(family.encode_family(&[("outcome", *outcome)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "vault_scheduled_verifications",
            "Scheduled verifications (serve --verify-every), by probe outcome or SKIPPED_BUDGET / SKIPPED_ERROR.",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in lock(&self.metrics.sweeps).iter() {
            ConstCounter::new(*n).encode(family.encode_family(&[("outcome", *outcome)])?)?;
        }
        let owed = i64::try_from(self.metrics.destruction_owed.load(Ordering::Relaxed)).unwrap_or(1);
        ConstGauge::new(owed).encode(encoder.encode_descriptor(
            "vault_destruction_owed",
            "1 while bytes a Revoke, Rotate or key rotation destroyed may still be in vault.db-wal (its truncation failed: readers, a full disk, an I/O error; or a crash came first); retried every 5 s.",
            None,
            MetricType::Gauge,
        )?)?;
        let due = i64::try_from(self.metrics.sweep_due.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        ConstGauge::new(due).encode(encoder.encode_descriptor(
            "vault_scheduled_verifications_due",
            "Codes due for a scheduled verification, and not skipped (an outage, an error), in the sweep's last page (at most 64); staying up means the sweep falls behind.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }

    fn encode_keys(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let keys = &self.scraped.data_keys;
        let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        let mut family = encoder.encode_descriptor(
            "vault_data_key_age_seconds",
            "Age of each data key; more than one key means a rotation is under way.",
            None,
            MetricType::Gauge,
        )?;
        for (id, age) in keys {
            let id = id.to_string();
            gauge(*age).encode(family.encode_family(&[("key_id", id.as_str())])?)?;
        }
        let active = keys.last().map_or(0, |(id, _)| u64::from(*id));
        gauge(active).encode(encoder.encode_descriptor(
            "vault_data_key_active_id",
            "Id of the data key new codes are sealed under.",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "vault_data_key_rotations",
            "Data-key rotations, by outcome (stopped ones resume on the next call or start).",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in ["finished", "stopped"].iter().zip(&self.metrics.rotations) {
            ConstCounter::new(n.load(Ordering::Relaxed)).encode(family.encode_family(&[("outcome", *outcome)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "vault_data_key_rekeyed_rows",
            "Rows moved to a new data key by rotations: codes re-sealed, token rows re-MAC'd.",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in ["code", "token"].iter().zip(&self.metrics.rekeyed) {
            ConstCounter::new(n.load(Ordering::Relaxed)).encode(family.encode_family(&[("kind", *kind)])?)?;
        }
        Ok(())
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
        m.observe_rpc("Reveal", 16, Duration::from_secs(20));
        m.observe_probe("sina", "ACCEPTED");
        m.observe_auth_failure("AUTH_THROTTLED");
        let m = Arc::new(m);
        m.observe_rotation(true);
        m.observe_rekeyed("code", 3);
        m.observe_sweep("REJECTED");
        m.observe_sweep_due(7);
        m.observe_destruction_owed(true);
        let scraped = Scraped {
            bindings: vec![("active", 2), ("revoked", 0)],
            data_keys: vec![(1, 90), (2, 5)],
            by_outcome: vec![("ACCEPTED", 1), ("REJECTED", 1)],
        };
        let text = m.render(&scraped).unwrap();
        assert!(text.contains("vault_data_key_age_seconds{key_id=\"1\"} 90"), "{text}");
        assert!(text.contains("vault_data_key_active_id 2"), "{text}");
        assert!(text.contains("vault_data_key_rotations_total{outcome=\"finished\"} 1"), "{text}");
        assert!(text.contains("vault_data_key_rekeyed_rows_total{kind=\"code\"} 3"), "{text}");
        assert!(text.contains("vault_rpc_requests_total{method=\"Bind\",code=\"OK\"} 2"), "{text}");
        assert!(text.contains("vault_rpc_duration_seconds_bucket{method=\"Bind\",code=\"OK\",le=\"0.005\"} 1"));
        assert!(text.contains("vault_rpc_duration_seconds_bucket{method=\"Bind\",code=\"OK\",le=\"0.05\"} 2"));
        assert!(text.contains("vault_probes_total{provider=\"sina\",outcome=\"ACCEPTED\"} 1"));
        assert!(text.contains("vault_bindings{state=\"active\"} 2"));
        // A code outside gRPC's 17 is UNKNOWN, as gRPC itself reads it.
        assert!(text.contains("vault_rpc_requests_total{method=\"other\",code=\"UNKNOWN\"} 1"), "{text}");
        assert!(text.contains("vault_rpc_requests_total{method=\"Reveal\",code=\"UNAUTHENTICATED\"} 1"), "{text}");
        assert!(
            text.contains(
                "vault_rpc_duration_seconds_bucket{method=\"Reveal\",code=\"UNAUTHENTICATED\",le=\"+Inf\"} 1"
            )
        );
        assert!(text.contains("vault_auth_failures_total{reason=\"AUTH_THROTTLED\"} 1"), "{text}");
        assert!(text.contains("vault_credentials_by_last_probe{outcome=\"REJECTED\"} 1"), "{text}");
        assert!(text.contains("vault_scheduled_verifications_total{outcome=\"REJECTED\"} 1"), "{text}");
        assert!(text.contains("vault_scheduled_verifications_due 7"), "{text}");
        assert!(text.contains("vault_destruction_owed 1"), "{text}");
    }
}

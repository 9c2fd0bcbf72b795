//! Benchmark support for authcode-vault. See `bench/run.py` for the harness and BENCHMARKS.md
//! for the figures.

/// `vault.v1` server stubs for the bare baseline.
#[allow(clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("vault.v1");
}

//! Benchmark support for authcode-vault. See `bench/run.py` for the harness and BENCHMARKS.md
//! for the figures.

/// `vault.v1`, whose server stubs answer UNIMPLEMENTED by default, for the bare baseline.
pub use vault_proto as proto;

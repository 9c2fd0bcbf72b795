#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 600), one after another, seeded from
# fuzz/corpus/<target>. New inputs go to fuzz/work/<target> (not committed); a crash stops the
# run and leaves its input in fuzz/artifacts/<target>/ (turn it into a seed in fuzz/corpus and a
# fix). Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "work/$t"
  echo "== $t: ${seconds}s"
  cargo +nightly fuzz run -O "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=1024 2>&1 |
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|Test unit written|thread .* panicked)|cov: ' | tail -n 8
done

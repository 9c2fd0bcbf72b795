#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 600), one after another, seeded from
# fuzz/corpus/<target>. New inputs go to fuzz/work/<target> (not committed). A crash ends that
# target's run and leaves its input in fuzz/artifacts/<target>/ (make it a seed in fuzz/corpus,
# where the suite replays it, and fix it); the other targets still run, and the script exits 1.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build -O
failed=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t"
  echo "== $t: ${seconds}s"
  if ! cargo +nightly fuzz run -O "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=1024 >"work/$t.log" 2>&1; then
    failed+=("$t")
  fi
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|Test unit written|thread .* panicked)' "work/$t.log" | tail -n 8
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi

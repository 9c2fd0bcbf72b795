#!/usr/bin/env bash
# Before/after Reveal throughput of the current tree against BASE (a commit), in one run.
# Builds BASE's vault-server in a scratch worktree (sharing this target dir), keeps a copy of
# the binary, builds the current tree, then runs bench/ab.py. Usage: bench/ab.sh BASE
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/ab.sh BASE_COMMIT}
command -v h2load >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-client; }
root=$(pwd)
scratch=$(mktemp -d)
trap 'git worktree remove --force "$scratch/tree" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
git worktree add --detach "$scratch/tree" "$base" >/dev/null
(cd "$scratch/tree" && CARGO_TARGET_DIR="$root/target" cargo build --release --locked -p vault-server)
mkdir -p "$scratch/bin"
cp target/release/vault-server "$scratch/bin/"
cargo build --release --locked -p vault-server -p vault-bench
python3 bench/ab.py "$scratch/bin"

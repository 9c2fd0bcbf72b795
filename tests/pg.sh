#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests and prints its URL on stdout: a temp dir,
# a free loopback port, password (SCRAM) authentication, run as the `postgres` user (via
# runuser) when started by root. It stops, and its dir goes, once process WATCH_PID has exited.
# Installs Debian's postgresql package when it is missing (as root). fsync is off (a throwaway
# cluster for tests) unless VAULT_PG_FSYNC=on (the benchmarks).
#   usage: tests/pg.sh WATCH_PID
set -euo pipefail
watch=${1:?usage: tests/pg.sh WATCH_PID}

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bindir=$(find_bin)
if [ -z "$bindir" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "tests/pg.sh: PostgreSQL is not installed; run as root or: apt-get install postgresql" >&2
        exit 1
    fi
    echo "tests/pg.sh: installing postgresql (Debian package)" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
        || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; }
    } >&2
    bindir=$(find_bin)
fi

dir=$(mktemp -d /tmp/vault-pg.XXXXXX)
as=()
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$dir"
    as=(runuser -u postgres --)
fi
password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
"${as[@]}" sh -c "umask 077; printf '%s\n' '$password' > '$dir/pw'"
"${as[@]}" "$bindir/initdb" -D "$dir/data" -U vault --auth=scram-sha-256 --pwfile="$dir/pw" -E UTF8 \
    --no-locale >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fsync=${VAULT_PG_FSYNC:-off}
case $fsync in on | off) ;; *) echo "tests/pg.sh: VAULT_PG_FSYNC must be on or off" >&2; exit 1 ;; esac
"${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=$fsync -c max_connections=400" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
stop="${as[*]} $bindir/pg_ctl -D $dir/data -m immediate stop"
nohup setsid bash -c "while kill -0 $watch 2>/dev/null; do sleep 1; done; $stop; rm -rf '$dir'" \
    >/dev/null 2>&1 </dev/null &
echo "postgres://vault:$password@127.0.0.1:$port/postgres"

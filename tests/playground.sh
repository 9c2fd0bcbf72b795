#!/usr/bin/env bash
# A local playground for the whole lifecycle: a throwaway Dovecot plays imap.sina.com and
# smtp.sina.com (certificate from a test CA made here), and `serve --dev` is wired to it with
# `--probe-resolve`, `--probe-ca-file` and a generous probe budget. Nothing touches the real
# provider. State lives in ./vault-playground (Dovecot, CA) and ./vault-dev (the vault), under
# the current directory. Ctrl-C stops both. Extra arguments go to `serve`.
#
# Mailboxes Dovecot knows, with the codes it accepts (16 letters or digits, as Sina's are):
#   alice@sina.com  PLAYGROUNDalice1 (and PLAYGROUNDalice2, a second code to rotate to)
#   bob@sina.com    PLAYGROUNDbob001 (and PLAYGROUNDbob002)
set -euo pipefail
umask 077
repo=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
dir=$PWD/vault-playground

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
[ -x /usr/lib/dovecot/submission ] || missing+=(dovecot-submissiond)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
# The README walkthrough's Python step makes a venv: Debian's python3 needs python3-venv for it.
command -v python3 >/dev/null && { python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv); }
if [ ${#missing[@]} -gt 0 ]; then
  echo "playground: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Refuse a directory (or a link) someone else planted: as root, writing through it would
# overwrite files anywhere.
if [ -L "$dir" ] || { [ -e "$dir" ] && [ "$(stat -c %u "$dir")" != "$(id -u)" ]; }; then
  echo "playground: $dir is a link or belongs to another user; remove it first" >&2
  exit 1
fi
mkdir -p "$dir"/run "$dir"/state "$dir"/passdb "$dir"/mail
if [ "$(id -u)" -eq 0 ]; then
  # Dovecot's unprivileged processes read the passdb and write mail as nobody.
  chmod 0755 "$dir" "$dir"/passdb
  chown nobody:nogroup "$dir"/mail
fi

# A test CA and a certificate for the Sina hosts, made once.
if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/server.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=authcode-vault playground CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=imap.sina.com" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:imap.sina.com,DNS:smtp.sina.com\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 365 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
fi

printf 'alice@sina.com:PLAYGROUNDalice1\nbob@sina.com:PLAYGROUNDbob001\n' >"$dir/passdb/codes"
printf 'alice@sina.com:PLAYGROUNDalice2\nbob@sina.com:PLAYGROUNDbob002\n' >"$dir/passdb/extra"
if [ "$(id -u)" -eq 0 ]; then chmod 0644 "$dir"/passdb/*; fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
imaps=$(free_port)
smtps=$(free_port)
if [ "$(id -u)" -eq 0 ]; then
  users="userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$dir/mail/%u
}"
else
  # Unprivileged: every Dovecot process runs as the caller.
  me=$(id -un)
  users="default_internal_user = $me
default_login_user = $me
default_internal_group = $(id -gn)
userdb {
  driver = static
  args = uid=$(id -u) gid=$(id -g) home=$dir/mail/%u
}"
fi
cat >"$dir/dovecot.conf" <<CONF
instance_name = vault-playground-$imaps
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
protocols = imap submission
listen = 127.0.0.1
hostname = smtp.sina.com
submission_relay_host = 127.0.0.1
submission_relay_port = 9
ssl = required
ssl_cert = <$dir/server.pem
ssl_key = <$dir/server.key
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:$dir/mail/%u
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dir/passdb/codes
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dir/passdb/extra
}
$users
# No chroot: it needs root, and this Dovecot only ever serves the playground on loopback.
service anvil {
  chroot =
}
service imap-login {
  chroot =
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = $imaps
    ssl = yes
  }
}
service submission-login {
  chroot =
  inet_listener submission {
    port = 0
  }
  inet_listener submissions {
    port = $smtps
    ssl = yes
  }
}
CONF

/usr/sbin/dovecot -F -c "$dir/dovecot.conf" </dev/null >/dev/null 2>&1 &
dovecot_pid=$!
trap 'kill "$dovecot_pid" 2>/dev/null; wait "$dovecot_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$imaps") 2>/dev/null; then break; fi
  kill -0 "$dovecot_pid" 2>/dev/null || { echo "playground: dovecot did not start; see $dir/dovecot.log" >&2; exit 1; }
  sleep 0.1
done

cat <<BANNER
playground: Dovecot plays imap.sina.com on 127.0.0.1:$imaps (log: $dir/dovecot.log)
playground: alice@sina.com accepts PLAYGROUNDalice1 and PLAYGROUNDalice2; bob@sina.com accepts PLAYGROUNDbob001 and PLAYGROUNDbob002
BANNER
cargo run -q --manifest-path "$repo/Cargo.toml" -p vault-server -- serve --dev \
  --probe-resolve "imap.sina.com:993=127.0.0.1:$imaps" --probe-resolve "smtp.sina.com:465=127.0.0.1:$smtps" \
  --probe-ca-file "$dir/ca.pem" --probe-burst 20 --probe-per-hour 600 "$@"

#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the tests and the reliability harness.
#   scripts/postgres.sh start DIR [PORT]   initdb in DIR (if empty) and start; prints the URL
#   scripts/postgres.sh stop DIR           fast shutdown
# PostgreSQL refuses to run as root, so under root the cluster belongs to the
# unprivileged `postgres` user (Debian's package creates it) and runs as that user.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$bindir/postgres" ] || { echo "PostgreSQL server binaries not found (apt install postgresql)" >&2; exit 1; }

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2; }

case "$cmd" in
  start)
    port=${3:-55432}
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    chmod 700 "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      # trust on loopback only: a test server with no data worth a password.
      as_owner "$bindir/initdb" -D "$dir" -U influxion --auth=trust -E UTF8 --no-locale >/dev/null
      cat >>"$dir/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
max_connections = 300
fsync = on
synchronous_commit = on
shared_buffers = 64MB
CONF
      # Members of entra_users must give a password (SCRAM), as Azure Database for
      # PostgreSQL asks for an Entra token: the tests of INFLUXION_DATABASE_AUTH=azure
      # and of password files make such roles. Everyone else is trusted on loopback.
      cat >"$dir/pg_hba.conf" <<CONF
host all +entra_users 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
CONF
    fi
    as_owner "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
    port=$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$dir/postgresql.conf" | tail -n1)
    echo "postgres://influxion@127.0.0.1:$port/postgres"
    ;;
  stop)
    [ -f "$dir/postmaster.pid" ] && as_owner "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true
    ;;
  *) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac

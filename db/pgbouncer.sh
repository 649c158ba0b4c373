#!/usr/bin/env bash
# PgBouncer in transaction pooling mode in front of a cluster of db/cluster.sh.
#
#   db/pgbouncer.sh start    write DIR/pgbouncer.ini and start PgBouncer (installing the Debian
#                            package as root when it is missing); stdout is one line,
#                            DATABASE_URL=... of the service role through the bouncer
#   db/pgbouncer.sh stop     stop it (fine when not running)
#
#   db/pgbouncer.sh run      the same config, PgBouncer in the foreground (a container's command)
#
# Environment: INVENTORY_BOUNCER_DIR (required: config, log, pid), INVENTORY_BOUNCER_LISTEN
# (default 127.0.0.1; * for every address), INVENTORY_BOUNCER_PORT (default 6432),
# INVENTORY_BOUNCER_POOL_SIZE (server connections per database, default 20),
# INVENTORY_BOUNCER_QUERY_WAIT_TIMEOUT (seconds a query may queue, default 3), INVENTORY_PG_HOST
# and INVENTORY_PG_PORT (the database; default 127.0.0.1:54320), INVENTORY_APP_PASSWORD (the
# service role's password; from the environment, never a command line).
#
# Any database name is passed through to the same name on the cluster (tests use several).
# Only the service role is let in (auth_file), with SCRAM like the cluster itself. As root,
# PgBouncer runs as the OS user postgres (it refuses to run as root).
set -euo pipefail

DIR=${INVENTORY_BOUNCER_DIR:?set INVENTORY_BOUNCER_DIR}
LISTEN=${INVENTORY_BOUNCER_LISTEN:-127.0.0.1}
PORT=${INVENTORY_BOUNCER_PORT:-6432}
POOL_SIZE=${INVENTORY_BOUNCER_POOL_SIZE:-20}
QUERY_WAIT=${INVENTORY_BOUNCER_QUERY_WAIT_TIMEOUT:-3}
PG_HOST=${INVENTORY_PG_HOST:-127.0.0.1}
PG_PORT=${INVENTORY_PG_PORT:-54320}
PIDFILE=$DIR/run/pgbouncer.pid
IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

say() { printf 'pgbouncer.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

as_runner() {
  if ((IS_ROOT)); then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

find_pgbouncer() {
  command -v pgbouncer 2>/dev/null || { [[ -x /usr/sbin/pgbouncer ]] && echo /usr/sbin/pgbouncer; }
}

ensure_pgbouncer() {
  PGBOUNCER=$(find_pgbouncer) && return 0
  if ((IS_ROOT)) && command -v apt-get >/dev/null 2>&1; then
    say "PgBouncer not found; installing it: apt-get install pgbouncer"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q pgbouncer >&2 || { apt-get update -q >&2 && apt-get install -y -q pgbouncer >&2; }; } ||
      die "apt-get install pgbouncer failed (see above)"
    PGBOUNCER=$(find_pgbouncer) || die "pgbouncer not found after installing it"
  else
    die "PgBouncer is not installed (Debian/Ubuntu: sudo apt-get install pgbouncer)"
  fi
}

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# Writes DIR/pgbouncer.ini and DIR/userlist.txt.
configure() {
  local pw=${INVENTORY_APP_PASSWORD:?set INVENTORY_APP_PASSWORD}
  [[ $pw != *'"'* ]] || die "the password must not contain a double quote"
  ensure_pgbouncer
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd -P)
  PIDFILE=$DIR/run/pgbouncer.pid
  # PgBouncer's own files (pid, log): a directory of the user it runs as.
  mkdir -p "$DIR/run"
  running && die "already running (pid $(cat "$PIDFILE")); db/pgbouncer.sh stop first"
  (umask 077 && printf '"inventory_app" "%s"\n' "$pw" >"$DIR/userlist.txt")
  cat >"$DIR/pgbouncer.ini" <<INI
; Written by db/pgbouncer.sh at every start; edits here are overwritten.
[databases]
; Any database name: the same name on the cluster.
* = host=$PG_HOST port=$PG_PORT

[pgbouncer]
listen_addr = $LISTEN
listen_port = $PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $DIR/userlist.txt
; A server connection serves one transaction, then the next client's: the service keeps no
; session state and prepares no statements (INVENTORY_PGBOUNCER=1).
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
; A query waits at most this long for a server connection (the database is down or
; saturated) before PgBouncer fails it (08P01, answered 503): keep it below the service's
; INVENTORY_POOL_TIMEOUT (5 s), so that its promise of a 503 within that holds here too.
query_wait_timeout = $QUERY_WAIT
server_connect_timeout = 3
; After a failed server login (the database restarting), try again after 1 s, not 15:
; the service is back within seconds of the database.
server_login_retry = 1
; The service sets no session parameters at connect; psycopg may send these.
ignore_startup_parameters = extra_float_digits
logfile = $DIR/run/pgbouncer.log
pidfile = $PIDFILE
INI
  DATABASE_URL=postgresql://inventory_app:$pw@127.0.0.1:$PORT/inventory
  if ((IS_ROOT)); then
    chmod 711 "$DIR"
    chown postgres: "$DIR/userlist.txt" "$DIR/pgbouncer.ini" "$DIR/run"
  fi
}

cmd_start() {
  configure
  say "starting PgBouncer on 127.0.0.1:$PORT -> 127.0.0.1:$PG_PORT (transaction pooling, log: $DIR/run/pgbouncer.log)"
  # -d: it daemonizes once it listens, so the port is open when this returns.
  as_runner "$PGBOUNCER" -d -q "$DIR/pgbouncer.ini" >&2 || die "pgbouncer did not start; see $DIR/run/pgbouncer.log"
  for _ in $(seq 50); do running && break; sleep 0.1; done
  running || die "pgbouncer did not start; see $DIR/run/pgbouncer.log"
  printf 'DATABASE_URL=%s\n' "$DATABASE_URL"
}

cmd_run() {
  configure
  exec "$PGBOUNCER" "$DIR/pgbouncer.ini"
}

cmd_stop() {
  local pid
  if ! running; then say "not running ($DIR)"; return 0; fi
  pid=$(cat "$PIDFILE")
  say "stopping PgBouncer (pid $pid)"
  kill -INT "$pid" # safe shutdown: the transactions in flight finish first
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -TERM "$pid" 2>/dev/null || true
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  run) cmd_run ;;
  *) echo "usage: db/pgbouncer.sh start|stop|run" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The scale topology on one machine, from the distribution's packages (docs/scaling.md):
#
#   primary cluster --streaming--> replica cluster (pg_basebackup -R)
#        ^
#   PgBouncer (transaction pooling) <-- API instance 1, API instance 2 <-- HAProxy
#
#   db/scale.sh start    start all of it (what is running already is left as it is); stdout:
#                        URL=<where to send requests> and API_1=, API_2= (the instances)
#   db/scale.sh stop     stop all of it (data kept)
#   db/scale.sh status   what runs
#
# ./run.sh scale [start|stop|status] runs this after making .venv. The instances write to the
# primary through PgBouncer (INVENTORY_PGBOUNCER=1), LISTEN on the primary directly and read
# exports, pages, GET /changes and reports from the replica (INVENTORY_READ_DATABASE_URL).
# HAProxy is used when it is installed or can be (apt-get, as root); otherwise URL is
# instance 1 and the second instance is reached on its own port.
#
# Environment: INVENTORY_SCALE_DIR (default <repo>/.scale: clusters, logs, pid files);
# ports INVENTORY_SCALE_PORT (HAProxy, 8080), INVENTORY_SCALE_PG_PORT (primary, 54330),
# INVENTORY_SCALE_REPLICA_PORT (the next), INVENTORY_SCALE_BOUNCER_PORT (6433),
# INVENTORY_SCALE_API_PORT (instance 1, 8001), INVENTORY_SCALE_API2_PORT (the next). Everything else (INVENTORY_API_TOKENS, ...)
# goes to both instances as it is.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DIR=${INVENTORY_SCALE_DIR:-$REPO/.scale}
case $DIR in /*) ;; *) DIR=$PWD/$DIR ;; esac
LB_PORT=${INVENTORY_SCALE_PORT:-8080}
PG_PORT=${INVENTORY_SCALE_PG_PORT:-54330}
REPLICA_PORT=${INVENTORY_SCALE_REPLICA_PORT:-$((PG_PORT + 1))}
BOUNCER_PORT=${INVENTORY_SCALE_BOUNCER_PORT:-6433}
API_PORT=${INVENTORY_SCALE_API_PORT:-8001}
API2_PORT=${INVENTORY_SCALE_API2_PORT:-$((API_PORT + 1))}
UVICORN=$REPO/.venv/bin/uvicorn
IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

say() { printf 'scale.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

cluster() { # cluster <primary|replica> <cluster.sh args...>
  local name=$1 port=$PG_PORT
  shift
  [[ $name == replica ]] && port=$REPLICA_PORT
  INVENTORY_DATA_DIR=$DIR/$name INVENTORY_PG_PORT=$port bash "$REPO/db/cluster.sh" "$@"
}

bouncer() {
  INVENTORY_BOUNCER_DIR=$DIR/pgbouncer INVENTORY_BOUNCER_PORT=$BOUNCER_PORT \
    INVENTORY_PG_PORT=$PG_PORT bash "$REPO/db/pgbouncer.sh" "$@"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

url_of() { sed -n 's/^DATABASE_URL=//p' | tail -n 1; }

find_haproxy() { command -v haproxy 2>/dev/null || { [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy; }; }

ensure_haproxy() {
  HAPROXY=$(find_haproxy) && return 0
  if ((IS_ROOT)) && command -v apt-get >/dev/null 2>&1; then
    say "HAProxy not found; installing it: apt-get install haproxy"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q haproxy >&2 || { apt-get update -q >&2 && apt-get install -y -q haproxy >&2; }; } || return 1
    HAPROXY=$(find_haproxy)
  else
    return 1
  fi
}

wait_ready() { # wait_ready <url> <what>
  for _ in $(seq 300); do
    if "$REPO/.venv/bin/python" -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$2 did not become ready at $1 within 30 s"
}

start_api() { # start_api <n> <port> <env...>
  local n=$1 port=$2 pidfile=$DIR/api-$1.pid
  shift 2
  if alive "$pidfile"; then say "API instance $n already running (pid $(cat "$pidfile"))"; return 0; fi
  say "starting API instance $n on 127.0.0.1:$port (log: $DIR/api-$n.log)"
  # setsid: the instance outlives this script (and its terminal) and is stopped by its pid
  # file; exec keeps the pid the subshell's.
  (cd "$REPO" && exec env "$@" setsid "$UVICORN" app.main:app --host 127.0.0.1 --port "$port" \
    --timeout-graceful-shutdown 20 --no-access-log </dev/null >>"$DIR/api-$n.log" 2>&1) &
  echo $! >"$pidfile"
}

cmd_start() {
  local primary_url replica_url bouncer_url app_pw url
  [[ -x $UVICORN ]] || die "no .venv: start it with ./run.sh scale"
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd -P)
  if ((IS_ROOT)); then
    # PgBouncer and HAProxy run as the OS user postgres and keep their files in here.
    chmod 711 "$DIR"
    runuser -u postgres -- test -x "$DIR" ||
      die "the OS user postgres cannot enter $DIR (a parent directory is closed to it); set INVENTORY_SCALE_DIR to a directory it can reach, e.g. /var/lib/inventory-api/scale"
  fi
  bash "$REPO/db/cluster.sh" bindir >/dev/null # installs PostgreSQL where missing
  primary_url=$(cluster primary start | url_of) || die "the primary did not start"
  replica_url=$(cluster replica replica "$DIR/primary" | url_of) || die "the replica did not start"
  app_pw=$(printf '%s' "$primary_url" | sed -n 's|^postgresql://inventory_app:\([^@]*\)@.*|\1|p')
  if alive "$DIR/pgbouncer/run/pgbouncer.pid"; then
    bouncer_url="postgresql://inventory_app:$app_pw@127.0.0.1:$BOUNCER_PORT/inventory"
  else
    bouncer_url=$(INVENTORY_APP_PASSWORD=$app_pw bouncer start | url_of) || die "PgBouncer did not start"
  fi
  local -a env=(
    DATABASE_URL="$bouncer_url"
    INVENTORY_PGBOUNCER=1
    INVENTORY_LISTEN_DATABASE_URL="$primary_url"
    INVENTORY_READ_DATABASE_URL="$replica_url"
  )
  start_api 1 "$API_PORT" "${env[@]}"
  start_api 2 "$API2_PORT" "${env[@]}"
  wait_ready "http://127.0.0.1:$API_PORT/readyz" "API instance 1"
  wait_ready "http://127.0.0.1:$API2_PORT/readyz" "API instance 2"
  url=http://127.0.0.1:$API_PORT
  if ensure_haproxy; then
    if ! alive "$DIR/haproxy/haproxy.pid"; then
      mkdir -p "$DIR/haproxy"
      cp "$REPO/db/haproxy.cfg" "$DIR/haproxy/haproxy.cfg"
      if ((IS_ROOT)); then chown -R postgres: "$DIR/haproxy"; fi
      say "starting HAProxy on 127.0.0.1:$LB_PORT"
      # As root, it runs as the same unprivileged user as PostgreSQL and PgBouncer.
      local -a runner=()
      ((IS_ROOT)) && runner=(runuser -u postgres --)
      # From its own directory: HAProxy returns to its starting directory after reading the
      # configuration, and the caller's (a root-only checkout, as in CI) may be closed to it.
      (cd "$DIR/haproxy" &&
        INVENTORY_LB_BIND=127.0.0.1:$LB_PORT INVENTORY_API_1=127.0.0.1:$API_PORT \
          INVENTORY_API_2=127.0.0.1:$API2_PORT \
          ${runner[@]+"${runner[@]}"} "$HAPROXY" -D -p "$DIR/haproxy/haproxy.pid" -f "$DIR/haproxy/haproxy.cfg") ||
        die "HAProxy did not start"
    fi
    url=http://127.0.0.1:$LB_PORT
    wait_ready "$url/readyz" "HAProxy"
  else
    say "HAProxy is not installed (apt-get install haproxy): use the instances directly"
  fi
  say "the API on $url (instances: 127.0.0.1:$API_PORT, 127.0.0.1:$API2_PORT); ./run.sh scale stop stops it all"
  printf 'URL=%s\nAPI_1=http://127.0.0.1:%s\nAPI_2=http://127.0.0.1:%s\n' "$url" "$API_PORT" "$API2_PORT"
}

stop_pidfile() { # stop_pidfile <file> <what>
  local pid
  alive "$1" || { rm -f "$1"; return 0; }
  pid=$(cat "$1")
  say "stopping $2 (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && say "warning: $2 (pid $pid) is still running"
  rm -f "$1"
}

cmd_stop() {
  [[ -d $DIR ]] || { say "nothing started in $DIR"; return 0; }
  stop_pidfile "$DIR/haproxy/haproxy.pid" HAProxy
  stop_pidfile "$DIR/api-1.pid" "API instance 1"
  stop_pidfile "$DIR/api-2.pid" "API instance 2"
  [[ -d $DIR/pgbouncer ]] && bouncer stop
  [[ -d $DIR/replica ]] && cluster replica stop
  [[ -d $DIR/primary ]] && cluster primary stop
  return 0
}

cmd_status() {
  local what
  for what in haproxy/haproxy.pid:HAProxy api-1.pid:"API instance 1" api-2.pid:"API instance 2" \
    pgbouncer/run/pgbouncer.pid:PgBouncer; do
    if alive "$DIR/${what%%:*}"; then echo "${what#*:}: running"; else echo "${what#*:}: not running"; fi
  done
  printf 'primary: '; cluster primary status || true
  printf 'replica: '; cluster replica status || true
}

case ${1:-start} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: db/scale.sh start|stop|status" >&2; exit 2 ;;
esac

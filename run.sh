#!/usr/bin/env bash
# The Inventory API's one entry point.
#
#   ./run.sh [serve]         the API on http://127.0.0.1:8000: docker compose when a Docker engine
#                            answers (and INVENTORY_NO_DOCKER is unset), else uvicorn on an embedded
#                            PostgreSQL cluster (db/cluster.sh) in .data/
#   ./run.sh test [args]     the test suite; args go to pytest
#   ./run.sh lint            ruff format --check, ruff check, mypy
#   ./run.sh psql [args]     psql as the superuser on the database
#   ./run.sh bench [args]    the benchmark (bench/bench.py; bench/run.sh also installs wrk);
#                            ./run.sh bench scale [args]: bench/scale.py;
#                            ./run.sh bench changelog [args]: bench/changelog.py;
#                            ./run.sh bench hotsku [args]: bench/hotsku.py
#   ./run.sh scale [stop|status]  the scale topology on this machine (db/scale.sh): primary and
#                            replica clusters, PgBouncer, two API instances, HAProxy on :8080
#   ./run.sh status          what runs: the API (pid, URL), the database, the data dir
#   ./run.sh stop            stop what ./run.sh started: the API, the database, the scale topology
#   ./run.sh destroy --yes   stop everything and delete the database (embedded cluster or volume)
#
# serve, test, psql and bench install what they need (.venv; PostgreSQL with apt-get as root on
# Debian/Ubuntu). One serve per data dir: a second is refused while the first runs. A serve
# checks its port before it starts anything, and stops what it started when it ends (Ctrl+C,
# ./run.sh stop, or uvicorn failing): the API, and the embedded database unless that was
# already running before it.
#
# Environment: HOST, PORT, WEB_CONCURRENCY (uvicorn); DATABASE_URL (serve against that database
# instead of the embedded one); INVENTORY_DATA_DIR, INVENTORY_PG_PORT (see db/cluster.sh).
set -euo pipefail

# Relative to the caller's directory, before we cd to the repo.
if [[ -n ${INVENTORY_DATA_DIR:-} && $INVENTORY_DATA_DIR != /* ]]; then
  export INVENTORY_DATA_DIR=$PWD/$INVENTORY_DATA_DIR
fi
if [[ -n ${INVENTORY_SCALE_DIR:-} && $INVENTORY_SCALE_DIR != /* ]]; then
  export INVENTORY_SCALE_DIR=$PWD/$INVENTORY_SCALE_DIR
fi
cd "$(dirname "${BASH_SOURCE[0]}")"
REPO=$PWD
VENV=$REPO/.venv
DATA_DIR=${INVENTORY_DATA_DIR:-$REPO/.data}
UVICORN_PID=$DATA_DIR/uvicorn.pid
SERVE_LOCK=$DATA_DIR/serve.lock
# What a serve started, for serve_cleanup; never taken from the environment.
API_PID='' STARTED_DB='' DATABASE_URL_GIVEN=${DATABASE_URL:+1}

say() { printf 'run.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
  cat >&2 <<'MSG'
usage: ./run.sh [serve]        start the API (http://127.0.0.1:8000, docs at /docs)
       ./run.sh test [args]    run the tests (args go to pytest)
       ./run.sh lint           ruff format --check, ruff check, mypy
       ./run.sh psql [args]    psql on the database, as superuser
       ./run.sh bench [args]   the benchmark against its ceilings (bench/bench.py -h)
       ./run.sh bench scale    two instances behind HAProxy and PgBouncer vs one direct
       ./run.sh bench changelog  the change log's cost: log on vs off (bench/changelog.py -h)
       ./run.sh bench hotsku   one hot SKU: reservations vs adjustments (bench/hotsku.py -h)
       ./run.sh scale [stop|status]  primary + replica, PgBouncer, two APIs, HAProxy (:8080)
       ./run.sh status         what runs: the API (pid, URL), the database, the data dir
       ./run.sh stop           stop the API and the database (and the scale topology)
       ./run.sh destroy --yes  stop both and delete the database
MSG
  exit "${1:-2}"
}

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then cat "$@" | sha256sum; else cat "$@" | shasum -a 256; fi |
    cut -d' ' -f1
}

# Makes .venv hold the packages of requirements file $1; files it pulls in with -r follow it.
# pip runs only when the files changed since the last install: a stamp in .venv holds their hash.
ensure_venv() {
  local req=$1 hash stamp
  # A .venv that is a link, or whose interpreter does not run here (made on another machine,
  # or its Python removed), cannot be repaired in place: python3 -m venv refuses "File exists".
  if [[ -L $VENV ]] || { [[ -e $VENV ]] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; }; then
    say "removing .venv: it $( [[ -L $VENV ]] && echo "is a link to $(readlink "$VENV")" || echo "does not run here"); rebuilding it"
    rm -rf -- "$VENV"
  fi
  if [[ ! -x $VENV/bin/python ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 not found: install Python 3.11 or newer"
    python_ok python3 || die "Python 3.11 or newer is needed; python3 is $(python3 -V 2>&1)"
    say "creating .venv"
    python3 -m venv "$VENV" || die "could not create .venv (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
  python_ok "$VENV/bin/python" ||
    die ".venv has $("$VENV/bin/python" -V 2>&1), Python 3.11 or newer is needed: remove .venv and run again"
  hash=$(sha256 "$@")
  stamp=$VENV/.stamp-${req%.txt}
  [[ -f $stamp && $(cat "$stamp") == "$hash" ]] && return 0
  say "installing $req into .venv"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q -r "$req" ||
    die "pip install -r $req failed (see above)"
  echo "$hash" >"$stamp"
}

serve_requirements() { ensure_venv requirements.txt; }
dev_requirements() {
  ensure_venv requirements-dev.txt requirements.txt
  # requirements-dev.txt pulls in requirements.txt, so the serve set is in too.
  sha256 requirements.txt >"$VENV/.stamp-requirements"
}

# docker compose when an engine answers; INVENTORY_NO_DOCKER=1 forces the embedded path.
use_docker() {
  [[ -z ${INVENTORY_NO_DOCKER:-} ]] && command -v docker >/dev/null 2>&1 &&
    docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1
}

# One serve per data dir. A second one would overwrite the first one's pid file (after which
# ./run.sh stop no longer stops the first) and empty the metrics files the first writes to.
# fd 8 holds the lock and survives exec, so uvicorn itself holds it: it is released exactly
# when uvicorn exits, however it exits.
claim_serve_lock() {
  mkdir -p "$DATA_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 8>>"$SERVE_LOCK"
    flock -n 8 || already_running
  elif [[ -f $UVICORN_PID ]] && is_uvicorn "$(cat "$UVICORN_PID")"; then
    already_running # no flock(1) (macOS): a live uvicorn behind the pid file says the same
  fi
  # Where this one serves, for a second one to report and for ./run.sh status to show.
  printf 'pid %s, http://%s\n' $$ "$1" >"$SERVE_LOCK"
}

already_running() {
  local where
  where=$(head -n 1 "$SERVE_LOCK" 2>/dev/null || true)
  die "the API is already running from $DATA_DIR (${where:-pid $(cat "$UVICORN_PID" 2>/dev/null || echo unknown)}); ./run.sh stop stops it"
}

# Refuses, before anything starts or is announced, an address uvicorn could not listen on:
# it would fail only after the database had been started and the API announced.
check_port() {
  local host=$1 port=$2 why
  command -v python3 >/dev/null 2>&1 || return 0 # no way to tell: uvicorn will say it
  why=$(python3 - "$host" "$port" 2>&1 <<'PY'
import socket, sys

host, port = sys.argv[1], int(sys.argv[2])
with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        s.bind((host, port))
    except OSError as e:
        sys.exit(e.strerror or str(e))
PY
) && return 0
  if [[ $why == *"in use"* ]]; then
    die "port $port on $host is already in use by another program; nothing was started. Choose another port with PORT=, e.g. PORT=$((port + 1)) ./run.sh"
  fi
  die "cannot listen on $host:$port ($why); nothing was started. Choose another address with HOST= and PORT="
}

cmd_serve() {
  local host=${HOST:-127.0.0.1} port=${PORT:-8000} env_lines status
  if use_docker; then
    check_port 127.0.0.1 "$port" # compose publishes the API on the host's loopback
    say "docker compose: the API on http://127.0.0.1:$port (docs: /docs); ./run.sh psql for SQL, Ctrl+C or ./run.sh stop to stop"
    say "its read-write token (made on the first start): docker compose exec api cat /srv/tokens/api-token"
    exec docker compose up --build
  fi
  claim_serve_lock "$host:$port"
  check_port "$host" "$port"
  serve_requirements
  # The app's own start-up checks, before anything starts: token variables that hold no
  # token, or an open API bound beyond loopback (uvicorn's supervisor would exit 0 after its
  # workers refused to start, which reads like success).
  "$VENV/bin/python" -c 'import sys; from app.core.access import Access; from app.config import Settings
Access.from_settings(Settings()).refuse_bind(sys.argv[1])' "$host" || die "not starting (see above)"
  # From here on, however this script ends, it stops what it started (serve_cleanup).
  trap serve_cleanup EXIT
  trap serve_interrupted INT TERM
  if [[ -z ${DATABASE_URL:-} ]]; then
    # 8>&-: the database server must not inherit the serve lock (it outlives uvicorn).
    # bindir first: this explicit set-up command may install PostgreSQL, start never does.
    db/cluster.sh bindir >/dev/null 8>&-
    db/cluster.sh status >/dev/null 2>&1 8>&- || STARTED_DB=1
    env_lines=$(db/cluster.sh start 8>&-) || die "the embedded PostgreSQL did not start (see above)"
    DATABASE_URL=$(printf '%s\n' "$env_lines" | sed -n 's/^DATABASE_URL=//p' | tail -n 1)
    export DATABASE_URL
    echo "database embedded" >>"$SERVE_LOCK"
  else
    echo "database $(printf '%s' "$DATABASE_URL" | sed -E 's#//[^@/]*@#//#')" >>"$SERVE_LOCK"
  fi
  say "the API on http://$host:$port (docs: http://$host:$port/docs); ./run.sh psql for SQL, Ctrl+C or ./run.sh stop to stop"
  # Metrics of all workers summed (docs/running.md "Metrics"): prometheus_client's
  # multiprocess files, emptied on every start so counters begin at zero with the new
  # processes. Only here, with the lock held: no other serve of this data dir writes to them.
  export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$DATA_DIR/metrics}
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  rm -f "$PROMETHEUS_MULTIPROC_DIR"/*.db
  # SIGTERM (./run.sh stop) lets requests in flight finish for up to 20 s (past the 15 s
  # statement_timeout), then closes the pool. The app logs each request itself, as JSON.
  "$VENV/bin/uvicorn" app.main:app --host "$host" --port "$port" --workers "${WEB_CONCURRENCY:-2}" \
    --timeout-graceful-shutdown 20 --no-access-log &
  API_PID=$!
  echo "$API_PID" >"$UVICORN_PID"
  # A trapped signal interrupts wait; uvicorn is waited for until it has really exited.
  while :; do
    status=0
    wait "$API_PID" || status=$?
    kill -0 "$API_PID" 2>/dev/null || break
  done
  exit "$status"
}

# Ctrl+C reaches uvicorn from the terminal as well; a signal sent to this script alone (kill, a
# supervisor) is passed on. Either way uvicorn lets requests in flight finish, then exits.
serve_interrupted() {
  if [[ -z ${API_PID:-} ]]; then exit 130; fi
  kill -TERM "$API_PID" 2>/dev/null || true
}

# Stops what this serve started: the API's pid file goes, and the embedded database stops
# unless it was running before (then it says so: something else may be using it).
serve_cleanup() {
  trap - INT TERM
  if [[ -n ${API_PID:-} ]]; then
    if kill -TERM "$API_PID" 2>/dev/null; then wait "$API_PID" 2>/dev/null || true; fi
    rm -f "$UVICORN_PID"
  fi
  if [[ -n ${STARTED_DB:-} ]]; then
    say "stopping the database this ./run.sh started (the data stays)"
    db/cluster.sh stop >/dev/null 2>&1 8>&- || say "warning: db/cluster.sh stop failed; run ./run.sh stop"
  elif [[ -z ${DATABASE_URL_GIVEN:-} ]] && db/cluster.sh status >/dev/null 2>&1 8>&-; then
    say "the database keeps running (it was running before this ./run.sh); ./run.sh stop stops it"
  fi
}

cmd_psql() {
  if use_docker; then
    local tty=()
    [[ -t 0 ]] || tty=(-T) # no terminal (a pipe, CI): no pseudo-TTY either
    exec docker compose exec ${tty[@]+"${tty[@]}"} db psql -U postgres inventory "$@"
  fi
  if ! db/cluster.sh status >/dev/null 2>&1; then
    db/cluster.sh bindir >/dev/null
    db/cluster.sh start >/dev/null || die "the embedded PostgreSQL did not start (see above)"
  fi
  exec db/cluster.sh psql "$@"
}

# True when $1 is a live process whose command line names uvicorn (a stale pid file may point at
# a PID that now belongs to something else).
is_uvicorn() {
  local args
  kill -0 "$1" 2>/dev/null || return 1
  if [[ -r /proc/$1/cmdline ]]; then args=$(tr '\0' ' ' <"/proc/$1/cmdline"); else args=$(ps -p "$1" -o args=); fi
  [[ $args == *uvicorn* ]]
}

stop_api() {
  local pid
  if [[ -f $UVICORN_PID ]]; then
    pid=$(cat "$UVICORN_PID")
    if is_uvicorn "$pid"; then
      say "stopping the API (pid $pid)"
      kill -TERM "$pid"
      for _ in $(seq 125); do is_uvicorn "$pid" || break; sleep 0.2; done
      if is_uvicorn "$pid"; then say "warning: uvicorn (pid $pid) is still shutting down"; fi
    fi
    rm -f "$UVICORN_PID"
  fi
}

cmd_stop() {
  stop_api
  # The ./run.sh that served stops the database it started once uvicorn is gone, holding the
  # serve lock until it is done: wait for it, so that two stops do not race.
  if command -v flock >/dev/null 2>&1 && [[ -f $SERVE_LOCK ]]; then
    flock -w 30 "$SERVE_LOCK" true || say "warning: the serving ./run.sh is still shutting down"
  fi
  db/cluster.sh stop
  if [[ -d ${INVENTORY_SCALE_DIR:-$REPO/.scale} ]]; then db/scale.sh stop; fi
  if use_docker; then docker compose down; fi # no -v: the data volume stays
}

# What runs from this data dir; exit 0 when the API does, 3 when it does not (as LSB's status).
cmd_status() {
  local pid='' where database rc=3
  if use_docker; then exec docker compose ps; fi
  [[ -f $UVICORN_PID ]] && pid=$(cat "$UVICORN_PID")
  if [[ -n $pid ]] && is_uvicorn "$pid"; then
    where=$(sed -n 's/^pid [0-9]*, //p' "$SERVE_LOCK" 2>/dev/null)
    echo "API:       running, pid $pid, ${where:-at an unknown address} (docs: ${where}/docs)"
    database=$(sed -n 's/^database //p' "$SERVE_LOCK" 2>/dev/null)
    rc=0
  else
    echo "API:       not running"
  fi
  if [[ -n ${database:-} && $database != embedded ]]; then
    echo "database:  $database (DATABASE_URL, credentials left out)"
  else
    echo "database:  embedded PostgreSQL, $(db/cluster.sh status 2>/dev/null || true)"
  fi
  echo "data dir:  $DATA_DIR"
  if [[ -L $DATA_DIR/pgdata ]]; then echo "           its cluster's files: $(readlink "$DATA_DIR/pgdata")"; fi
  if [[ -d ${INVENTORY_SCALE_DIR:-$REPO/.scale} ]]; then
    echo "scale topology (./run.sh scale):"
    db/scale.sh status || true
  fi
  return "$rc"
}

# Deletes data, so only when asked in so many words.
cmd_destroy() {
  local answer
  if [[ ${1:-} != --yes ]]; then
    [[ -t 0 ]] || die "destroy deletes the database and all its data; to confirm: ./run.sh destroy --yes"
    printf 'Stop the API and delete the database of %s for good? Type yes: ' "$DATA_DIR" >&2
    read -r answer
    [[ $answer == yes ]] || die "nothing deleted"
  fi
  if use_docker; then
    docker compose down -v
    return
  fi
  stop_api
  rm -rf -- "$DATA_DIR/metrics"
  rm -f -- "$SERVE_LOCK"
  db/cluster.sh destroy --yes
}

cmd_test() {
  dev_requirements
  # The tests start a throwaway cluster through db/cluster.sh: make sure the server is installed.
  db/cluster.sh bindir >/dev/null
  if [[ $# -gt 0 ]]; then
    exec "$VENV/bin/python" -m pytest "$@"
  fi
  # Everything: the fast tests spread over every core (each worker with its own cluster),
  # then the slow system tests that measure no time, spread too (a module's shared big
  # fixture stays on one worker: xdist_group), then those marked `alone` one at a time,
  # so that their timings (outages, shutdowns, deadlines) are not measured on a machine
  # another worker is keeping busy.
  "$VENV/bin/python" -m pytest -m "not slow" -n auto
  "$VENV/bin/python" -m pytest -m "slow and not alone" -n auto --dist loadgroup
  exec "$VENV/bin/python" -m pytest -m "slow and alone"
}

cmd_lint() {
  dev_requirements
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/ruff" check .
  "$VENV/bin/mypy"
  if command -v shellcheck >/dev/null 2>&1; then
    shellcheck run.sh db/cluster.sh db/migrate.sh db/pgbouncer.sh db/scale.sh .ci/run
  else
    say "shellcheck is not installed: the shell scripts were not checked (apt-get install shellcheck)"
  fi
}

cmd_scale() {
  case ${1:-start} in
    start)
      serve_requirements
      exec db/scale.sh start
      ;;
    stop | status) exec db/scale.sh "$1" ;;
    *) usage ;;
  esac
}

cmd_bench() {
  serve_requirements
  db/cluster.sh bindir >/dev/null
  if [[ ${1:-} == scale ]]; then
    # Two instances behind HAProxy and PgBouncer next to one direct (docs/scaling.md).
    shift
    exec "$VENV/bin/python" bench/scale.py "$@"
  fi
  if [[ ${1:-} == changelog ]]; then
    # The change log's cost: log on against log off, side by side (docs/changelog.md).
    shift
    exec "$VENV/bin/python" bench/changelog.py "$@"
  fi
  if [[ ${1:-} == hotsku ]]; then
    # One hot SKU: reservations against adjustments, side by side (docs/locations.md).
    shift
    exec "$VENV/bin/python" bench/hotsku.py "$@"
  fi
  exec "$VENV/bin/python" bench/bench.py "$@"
}

cmd=${1:-serve}
[[ $# -gt 0 ]] && shift
case $cmd in
  serve) cmd_serve ;;
  test) cmd_test "$@" ;;
  lint) cmd_lint ;;
  psql) cmd_psql "$@" ;;
  bench) cmd_bench "$@" ;;
  scale) cmd_scale "$@" ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  destroy) cmd_destroy "$@" ;;
  -h | --help | help) usage 0 ;;
  *) usage ;;
esac

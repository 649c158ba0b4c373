#!/usr/bin/env bash
# The embedded, private PostgreSQL cluster of the Inventory API.
#
#   db/cluster.sh start         initialise (first time), start, create database inventory, apply
#                               db/roles.sql and schema.sql; the last two stdout lines are
#                               DATABASE_URL=... and ADMIN_DATABASE_URL=...
#   db/cluster.sh stop          fast shutdown; fine when not running
#   db/cluster.sh status        exit 0 when running, 3 when not
#   db/cluster.sh env           print the env file (the two KEY=value lines)
#   db/cluster.sh psql [args]   psql as the superuser on database inventory
#   db/cluster.sh bindir        print the server binary directory, installing PostgreSQL if needed
#
# Environment: INVENTORY_DATA_DIR (default <repo>/.data), INVENTORY_PG_PORT (default 54320),
# INVENTORY_PG_FAST=1 (throwaway test clusters only: no fsync), PG_BINDIR (server binaries).
#
# Layout of the data dir: pgdata/ (the cluster), postgres.log, env (mode 0600: the two URLs, with
# passwords made once at initdb). As root, pgdata may instead live under /var/lib/inventory-api,
# with pgdata and postgres.log here as symlinks to it (see prepare_layout).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DATA_DIR=${INVENTORY_DATA_DIR:-$REPO/.data}
case $DATA_DIR in /*) ;; *) DATA_DIR=$PWD/$DATA_DIR ;; esac
PORT=${INVENTORY_PG_PORT:-54320}
RELOCATE_ROOT=/var/lib/inventory-api
IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

say() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[[ $PORT =~ ^[0-9]+$ ]] && ((PORT > 0 && PORT < 65536)) || die "INVENTORY_PG_PORT=$PORT is not a port number"

# Paths derived from DATA_DIR; called again once DATA_DIR is canonical.
set_paths() {
  ENV_FILE=$DATA_DIR/env
  # Relocated (root only): pgdata is a symlink to an absolute path we wrote ourselves.
  if [[ -L $DATA_DIR/pgdata ]]; then
    PGDATA_DIR=$(readlink "$DATA_DIR/pgdata")
  else
    PGDATA_DIR=$DATA_DIR/pgdata
  fi
  LOG_FILE=$(dirname "$PGDATA_DIR")/postgres.log
}
set_paths

# PostgreSQL refuses to run as root: as root, the server tools run as the postgres OS user.
# cd / first, so postgres is never left in a working directory it cannot read.
as_pg() {
  if ((IS_ROOT)); then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_can_reach() { as_pg test -x "$1"; }

# ---------------------------------------------------------------------------------------------
# Server binaries

find_bindir() {
  local d
  if [[ -n ${PG_BINDIR:-} ]]; then
    [[ -x $PG_BINDIR/initdb ]] && { echo "$PG_BINDIR"; return 0; }
    say "PG_BINDIR=$PG_BINDIR holds no initdb"
    return 1
  fi
  if command -v pg_config >/dev/null 2>&1 && d=$(pg_config --bindir 2>/dev/null) && [[ -x $d/initdb ]]; then
    echo "$d"; return 0
  fi
  # Debian/Ubuntu keep the server off PATH, one directory per major version: take the highest.
  # Homebrew's postgresql@NN is keg-only, so it is not on PATH either.
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5nr) \
           $(ls -d /opt/homebrew/opt/postgresql@*/bin /usr/local/opt/postgresql@*/bin 2>/dev/null | sort -t@ -k2,2nr); do
    [[ -x $d/initdb ]] && { echo "$d"; return 0; }
  done
  # Fedora's postgresql-server and a linked Homebrew formula put initdb on PATH.
  if d=$(command -v initdb 2>/dev/null); then dirname "$d"; return 0; fi
  return 1
}

missing_server() {
  cat >&2 <<'MSG'
cluster.sh: the PostgreSQL server (initdb, pg_ctl) is not installed. Install it and run again:
  Debian/Ubuntu:  sudo apt-get install postgresql
  Fedora:         sudo dnf install postgresql-server
  macOS:          brew install postgresql@15
or set PG_BINDIR to the directory that holds initdb.
MSG
  exit 2
}

# Sets BINDIR and PSQL; installs the server with apt-get when we are root on Debian/Ubuntu.
ensure_bindir() {
  if ! BINDIR=$(find_bindir); then
    if ((IS_ROOT)) && [[ -z ${PG_BINDIR:-} ]] && command -v apt-get >/dev/null 2>&1; then
      say "PostgreSQL server not found; installing it: apt-get install postgresql"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q >&2 && apt-get install -y -q postgresql >&2 || die "apt-get install postgresql failed (see above)"
      BINDIR=$(find_bindir) || missing_server
    else
      missing_server
    fi
  fi
  PSQL=$BINDIR/psql
  [[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found (install the PostgreSQL client)"
  if ((IS_ROOT)); then
    command -v runuser >/dev/null 2>&1 || die "as root the server runs as user postgres, which needs runuser (util-linux)"
    id postgres >/dev/null 2>&1 || die "as root the server runs as the OS user postgres, which does not exist (the postgresql package creates it)"
  fi
}

# ---------------------------------------------------------------------------------------------
# Data directory

# Serialises start/stop for one data dir: two processes starting at once (say two uvicorn
# workers) must not both initdb or both pg_ctl start.
lock_data_dir() {
  if command -v flock >/dev/null 2>&1; then
    exec 9>>"$DATA_DIR/.lock"
    flock -w 300 9 || die "timed out waiting for the lock $DATA_DIR/.lock"
  else
    # No flock(1) (macOS): mkdir is atomic; a lock whose holder died is taken over.
    local dir=$DATA_DIR/.lock.d waited=0 holder
    until mkdir "$dir" 2>/dev/null; do
      holder=$(cat "$dir/pid" 2>/dev/null || true)
      if [[ -n $holder ]] && ! kill -0 "$holder" 2>/dev/null; then rm -rf "$dir"; continue; fi
      ((waited++ < 300)) || die "timed out waiting for the lock $dir"
      sleep 1
    done
    echo $$ >"$dir/pid"
    trap 'rm -rf "$DATA_DIR/.lock.d"' EXIT
  fi
}

# As root the server runs as postgres, which must reach pgdata and postgres.log. The data dir is
# ours to open up (0711: traverse, not list); its ancestors are not. When an ancestor still
# blocks postgres (a checkout under /root, a data dir inside a mktemp -d dir), the cluster lives
# in /var/lib/inventory-api/<hash of the data dir path>, linked from the data dir.
prepare_layout() {
  ((IS_ROOT)) || return 0
  if [[ ! -e $DATA_DIR/pgdata && ! -L $DATA_DIR/pgdata ]]; then
    chmod go+x "$DATA_DIR"
    pg_can_reach "$DATA_DIR" || relocate
  elif [[ ! -L $DATA_DIR/pgdata ]]; then
    chmod go+x "$DATA_DIR"
  fi
  mkdir -p "$PGDATA_DIR"
  chown postgres: "$PGDATA_DIR"
  chmod 700 "$PGDATA_DIR"
  touch "$LOG_FILE"
  chown postgres: "$LOG_FILE"
  pg_can_reach "$PGDATA_DIR" ||
    die "user postgres cannot reach $PGDATA_DIR (a parent directory is closed to it); move the data dir or set INVENTORY_DATA_DIR"
}

relocate() {
  local hash dir
  hash=$(printf %s "$DATA_DIR" | sha256sum | cut -c1-16)
  dir=$RELOCATE_ROOT/$hash
  say "user postgres cannot reach $DATA_DIR; keeping the cluster in $dir"
  collect_orphans
  if [[ -e $dir && ! -f $ENV_FILE ]]; then
    # Left by an earlier data dir at this same path whose env (passwords) is gone: unusable.
    say "removing the stale cluster $dir"
    as_pg "$BINDIR/pg_ctl" -D "$dir/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir" || true
  fi
  mkdir -p "$dir"
  chmod 755 "$RELOCATE_ROOT" "$dir"
  printf '%s\n' "$DATA_DIR" >"$dir/owner"
  ln -sfn "$dir/pgdata" "$DATA_DIR/pgdata"
  ln -sfn "$dir/postgres.log" "$DATA_DIR/postgres.log"
  set_paths
}

# A relocated cluster whose data dir was deleted (a test's temp dir, say) is garbage: nobody
# has its passwords any more. Stop and remove those, so throwaway clusters do not pile up.
collect_orphans() {
  local d owner
  for d in "$RELOCATE_ROOT"/*; do
    [[ -f $d/owner ]] || continue
    owner=$(cat "$d/owner")
    [[ -e $owner ]] && continue
    say "removing the cluster $d of the deleted data dir $owner"
    as_pg "$BINDIR/pg_ctl" -D "$d/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$d" || true
  done
}

random_password() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

read_env() {
  [[ -f $ENV_FILE ]] || return 1
  APP_PW=$(sed -n 's|^DATABASE_URL=postgresql://inventory_app:\([^@]*\)@.*|\1|p' "$ENV_FILE")
  ADMIN_PW=$(sed -n 's|^ADMIN_DATABASE_URL=postgresql://postgres:\([^@]*\)@.*|\1|p' "$ENV_FILE")
  [[ -n $APP_PW && -n $ADMIN_PW ]]
}

write_env() {
  local port=$1 tmp
  tmp=$(mktemp "$DATA_DIR/.env.XXXXXX") # mktemp makes it 0600
  printf 'DATABASE_URL=postgresql://inventory_app:%s@127.0.0.1:%s/inventory\n' "$APP_PW" "$port" >"$tmp"
  printf 'ADMIN_DATABASE_URL=postgresql://postgres:%s@127.0.0.1:%s/inventory\n' "$ADMIN_PW" "$port" >>"$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

init_cluster() {
  local locale=C pwfile nosync=()
  # A throwaway test cluster need not survive a power cut, so initdb need not fsync either.
  [[ ${INVENTORY_PG_FAST:-} == 1 ]] && nosync=(--no-sync)
  # C.UTF-8: byte-order collation (stable across OS upgrades) with UTF-8 character classes.
  if locale -a 2>/dev/null | grep -qixE 'c\.utf-?8'; then locale=C.UTF-8; fi
  # Beside pgdata, so postgres can read it whatever TMPDIR is.
  pwfile=$(mktemp "$(dirname "$PGDATA_DIR")/.pwfile.XXXXXX")
  printf '%s\n' "$ADMIN_PW" >"$pwfile"
  ((IS_ROOT)) && chown postgres "$pwfile"
  say "initialising a new cluster in $PGDATA_DIR"
  if ! as_pg "$BINDIR/initdb" -D "$PGDATA_DIR" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
      --pwfile="$pwfile" -E UTF8 --locale="$locale" --no-instructions ${nosync[@]+"${nosync[@]}"} >&2; then
    rm -f "$pwfile"
    die "initdb failed (see above)"
  fi
  rm -f "$pwfile"
  # TCP on loopback only, and no unix socket: nothing needs /var/run/postgresql, and socket
  # paths have a ~100 byte limit that deep data dirs exceed. The port is also given at each start.
  cat >>"$PGDATA_DIR/postgresql.conf" <<CONF

# inventory-api (db/cluster.sh)
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = ''
CONF
}

# ---------------------------------------------------------------------------------------------
# Server

is_running() {
  [[ -n ${BINDIR:-} && -f $PGDATA_DIR/PG_VERSION ]] || return 1
  as_pg "$BINDIR/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1
}

# Line 4 of postmaster.pid is the port the running server listens on.
running_port() { sed -n 4p "$PGDATA_DIR/postmaster.pid"; }

port_in_use() { (exec 5<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() {
  local opts="-p $PORT"
  if [[ ${INVENTORY_PG_FAST:-} == 1 ]]; then
    # Throwaway test clusters only: a crash can lose or corrupt data, which a test never keeps.
    opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  say "starting PostgreSQL on 127.0.0.1:$PORT (log: $DATA_DIR/postgres.log)"
  # 3>&- 9>&-: the server must not inherit our stdout (a caller reading it would never see EOF)
  # nor the lock (it would stay held as long as the server runs).
  if ! as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$LOG_FILE" -w -t 60 -o "$opts" start >&2 3>&- 9>&-; then
    if tail -n 20 "$LOG_FILE" | grep -q 'could not bind\|Address already in use'; then
      die "port $PORT on 127.0.0.1 is already taken by another program; set INVENTORY_PG_PORT to a free port"
    fi
    say "PostgreSQL did not start; the end of $DATA_DIR/postgres.log:"
    tail -n 20 "$LOG_FILE" >&2
    exit 1
  fi
}

# Every start, so that schema changes reach an existing cluster: schema.sql is idempotent.
setup_database() {
  local port=$1
  admin_psql() {
    # client_min_messages=warning: re-applying idempotent SQL raises "already exists" notices.
    PGPASSWORD=$ADMIN_PW PGCONNECT_TIMEOUT=10 PGOPTIONS='-c client_min_messages=warning' \
      "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@" >&2
  }
  admin_psql -d postgres <<'SQL' || die "could not create database inventory (see above)"
SELECT 'CREATE DATABASE inventory' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'inventory')
\gexec
SQL
  # The password goes in on stdin, not argv: argv is visible to every local user in ps.
  { printf "\\set app_password '%s'\n" "$APP_PW"; cat "$REPO/db/roles.sql"; } |
    admin_psql -d inventory -f - || die "applying db/roles.sql failed (see above)"
  if [[ -f $REPO/schema.sql ]]; then
    admin_psql -d inventory -f "$REPO/schema.sql" || die "applying schema.sql failed (see above)"
  else
    say "warning: $REPO/schema.sql not found; no schema applied"
  fi
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_start() {
  # stdout carries only the final two KEY=value lines; everything else goes to stderr.
  exec 3>&1 1>&2
  ensure_bindir
  mkdir -p "$DATA_DIR"
  DATA_DIR=$(cd "$DATA_DIR" && pwd -P)
  set_paths
  lock_data_dir
  prepare_layout
  if ! is_running && port_in_use "$PORT"; then
    die "port $PORT on 127.0.0.1 is already taken by another program; set INVENTORY_PG_PORT to a free port"
  fi
  if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
    if ! read_env; then
      APP_PW=$(random_password)
      ADMIN_PW=$(random_password)
    fi
    write_env "$PORT" # before initdb: the passwords must outlive a failed first start
    init_cluster
  elif ! read_env; then
    die "$ENV_FILE (the cluster's passwords) is missing; to start over, remove $DATA_DIR"
  fi
  local port=$PORT
  if is_running; then
    port=$(running_port)
    say "already running on 127.0.0.1:$port"
    [[ $port == "$PORT" ]] || say "warning: running on port $port, not INVENTORY_PG_PORT=$PORT; stop it to change ports"
  else
    start_server
  fi
  write_env "$port"
  setup_database "$port"
  cat "$ENV_FILE" >&3
}

# For stop, status, env and psql: nothing is created.
open_existing() {
  [[ -d $DATA_DIR ]] || return 1
  DATA_DIR=$(cd "$DATA_DIR" && pwd -P)
  set_paths
  BINDIR=$(find_bindir 2>/dev/null) || BINDIR=
  PSQL=${BINDIR:+$BINDIR/psql}
  [[ -x ${PSQL:-} ]] || PSQL=$(command -v psql 2>/dev/null) || PSQL=psql
}

cmd_stop() {
  if ! open_existing || ! is_running; then
    say "not running ($DATA_DIR)"
    return 0
  fi
  lock_data_dir
  say "stopping PostgreSQL ($DATA_DIR)"
  as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >&2 9>&-
}

cmd_status() {
  if open_existing && is_running; then
    echo "running on 127.0.0.1:$(running_port) ($DATA_DIR)"
    return 0
  fi
  echo "not running ($DATA_DIR)"
  exit 3
}

cmd_env() {
  open_existing && [[ -f $ENV_FILE ]] || die "no cluster at $DATA_DIR yet; run: db/cluster.sh start"
  cat "$ENV_FILE"
}

cmd_psql() {
  open_existing && read_env || die "no cluster at $DATA_DIR yet; run: db/cluster.sh start"
  is_running || die "not running; run: db/cluster.sh start"
  PGPASSWORD=$ADMIN_PW exec "$PSQL" -d "postgresql://postgres@127.0.0.1:$(running_port)/inventory" "$@"
}

usage() {
  echo "usage: db/cluster.sh start|stop|status|env|psql [psql args...]|bindir" >&2
  exit 2
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  psql) cmd_psql "$@" ;;
  bindir) ensure_bindir; echo "$BINDIR" ;;
  *) usage ;;
esac

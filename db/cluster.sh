#!/usr/bin/env bash
# The embedded, private PostgreSQL cluster of the Inventory API.
#
#   db/cluster.sh start           initialise (first time), start, create database inventory, run
#                                 db/migrate.sh (db/roles.sql and schema.sql, applied only when they
#                                 changed); stdout is one line, the service role's DATABASE_URL=...
#   db/cluster.sh stop            fast shutdown; fine when not running
#   db/cluster.sh status          exit 0 when running, 3 when not
#   db/cluster.sh env             print the env file (DATABASE_URL=...)
#   db/cluster.sh psql [args]     psql as the superuser on database inventory
#   db/cluster.sh admin-url       the superuser's libpq URL: the private unix socket, no password
#   db/cluster.sh bindir          print the server binary directory; the one command that installs
#                                 PostgreSQL (apt-get, as root on Debian/Ubuntu) when it is missing
#   db/cluster.sh destroy --yes   stop this data dir's cluster and delete it, data and all
#   db/cluster.sh replica DIR     make this data dir a streaming replica of the running cluster
#                                 of data dir DIR (pg_basebackup -R), start it; stdout as start
#
# Environment: INVENTORY_DATA_DIR (default <repo>/.data), INVENTORY_PG_PORT (default 54320),
# INVENTORY_PG_FAST=1 (throwaway test clusters only: no fsync), PG_BINDIR (server binaries).
#
# Who may do what: the service role inventory_app logs in over TCP on 127.0.0.1 with its
# password (the env file, mode 0600). The superuser postgres has no password at all: it is
# reached only over a unix socket in a private directory (mode 0700), by the OS user that runs
# the server, and by root (peer authentication, pg_hba.conf and pg_ident.conf written at every
# start). So nothing `start` prints, and no file, hands out superuser access.
#
# Layout of the data dir: pgdata/ (the cluster), postgres.log (mode 0600), env (mode 0600),
# socket/ (the superuser's socket; elsewhere when the path is too long for a socket). As root,
# when the OS user postgres cannot enter the data dir (a checkout under /root or inside a
# mktemp -d directory), pgdata lives in /var/lib/inventory-api/<hash of the data dir path>,
# linked from the data dir; every start says so, and only `destroy` ever deletes it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DATA_DIR=${INVENTORY_DATA_DIR:-$REPO/.data}
case $DATA_DIR in /*) ;; *) DATA_DIR=$PWD/$DATA_DIR ;; esac
PORT=${INVENTORY_PG_PORT:-54320}
RELOCATE_ROOT=/var/lib/inventory-api
IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1
# PostgreSQL refuses to run as root: as root the server runs as the OS user postgres.
if ((IS_ROOT)); then SERVER_USER=postgres; else SERVER_USER=$(id -un); fi

say() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
  die "INVENTORY_PG_PORT=$PORT is not a port number"
fi

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -d' ' -f1
}

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
  RELOCATED_DIR=$RELOCATE_ROOT/$(printf %s "$DATA_DIR" | sha256 | cut -c1-16)
}
set_paths

# As root, the server tools run as the postgres OS user.
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
  # shellcheck disable=SC2012 # ls for the sorted glob: these paths hold no odd characters
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5nr) \
           $(ls -d /opt/homebrew/opt/postgresql@*/bin /usr/local/opt/postgresql@*/bin 2>/dev/null | sort -t@ -k2,2nr); do
    [[ -x $d/initdb ]] && { echo "$d"; return 0; }
  done
  # Fedora's postgresql-server and a linked Homebrew formula put initdb on PATH.
  if d=$(command -v initdb 2>/dev/null); then dirname "$d"; return 0; fi
  return 1
}

missing_server() {
  local installing=$1
  if ((installing)); then
    say "the PostgreSQL server (initdb, pg_ctl) is not installed. Install it and run again:"
  else
    # start runs from the app's lifespan too (uvicorn without DATABASE_URL): a web worker must
    # never run a package manager, so only the explicit set-up commands install.
    say "the PostgreSQL server (initdb, pg_ctl) is not installed, and starting the database never installs it."
    say "Run ./run.sh once (as root on Debian/Ubuntu it installs PostgreSQL), or install it yourself:"
  fi
  cat >&2 <<'MSG'
  Debian/Ubuntu:  sudo apt-get install postgresql
  Fedora:         sudo dnf install postgresql-server
  macOS:          brew install postgresql@15
or set PG_BINDIR to the directory that holds initdb.
MSG
  exit 2
}

# Sets BINDIR and PSQL. With $1 = 1 (the bindir command only) a missing server is installed
# with apt-get when we are root on Debian/Ubuntu.
ensure_bindir() {
  local install=${1:-0}
  if ! BINDIR=$(find_bindir); then
    if ((install && IS_ROOT)) && [[ -z ${PG_BINDIR:-} ]] && command -v apt-get >/dev/null 2>&1; then
      say "PostgreSQL server not found; installing it: apt-get install postgresql"
      export DEBIAN_FRONTEND=noninteractive
      if ! { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }; then
        die "apt-get install postgresql failed (see above)"
      fi
      BINDIR=$(find_bindir) || missing_server "$install"
    else
      missing_server "$install"
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

# Serialises start/stop/destroy for one data dir: two processes starting at once (say two
# uvicorn workers) must not both initdb, both pg_ctl start or both apply the schema.
lock_data_dir() {
  if command -v flock >/dev/null 2>&1; then
    exec 9>>"$DATA_DIR/.lock"
    flock -w 300 9 || die "timed out waiting for the lock $DATA_DIR/.lock"
  else
    # No flock(1) (macOS): mkdir is atomic; a lock whose holder died is taken over.
    local dir=$DATA_DIR/.lock.d waited=0 holder
    until mkdir "$dir" 2>/dev/null; do
      holder=$(cat "$dir/pid" 2>/dev/null || true)
      if [[ -n $holder ]] && ! kill -0 "$holder" 2>/dev/null; then rm -f "$dir/pid"; rmdir "$dir"; continue; fi
      ((waited++ < 300)) || die "timed out waiting for the lock $dir"
      sleep 1
    done
    echo $$ >"$dir/pid"
    trap 'rm -f "$DATA_DIR/.lock.d/pid"; rmdir "$DATA_DIR/.lock.d"' EXIT
  fi
}

# The first directory on the way to $1 that the postgres OS user cannot enter.
first_blocked() {
  local path=$1 prefix="" part
  local -a parts
  IFS=/ read -ra parts <<<"${path#/}"
  for part in "${parts[@]}"; do
    prefix+=/$part
    pg_can_reach "$prefix" || { echo "$prefix"; return 0; }
  done
}

# As root the server runs as postgres, which must reach pgdata and postgres.log. The data dir is
# ours to open up (0711: traverse, not list); its ancestors are not. When an ancestor still
# blocks postgres, the cluster lives in /var/lib/inventory-api/<hash>, linked from the data dir.
prepare_layout() {
  if ((IS_ROOT)); then
    if [[ ! -e $DATA_DIR/pgdata && ! -L $DATA_DIR/pgdata ]]; then
      chmod go+x "$DATA_DIR"
      pg_can_reach "$DATA_DIR" || relocate
    elif [[ ! -L $DATA_DIR/pgdata ]]; then
      chmod go+x "$DATA_DIR"
    fi
    [[ -L $DATA_DIR/pgdata ]] && explain_relocation
    mkdir -p "$PGDATA_DIR"
    chown postgres: "$PGDATA_DIR"
    chmod 700 "$PGDATA_DIR"
    touch "$LOG_FILE"
    chown postgres: "$LOG_FILE"
    pg_can_reach "$PGDATA_DIR" ||
      die "user postgres cannot reach $PGDATA_DIR (a parent directory is closed to it); move the data dir or set INVENTORY_DATA_DIR"
  else
    mkdir -p "$PGDATA_DIR"
    touch "$LOG_FILE"
  fi
  # The log holds statements, role names and client addresses: the server's user only.
  chmod 600 "$LOG_FILE"
}

relocate() {
  local dir=$RELOCATED_DIR owner
  if [[ -e $dir ]]; then
    owner=$(cat "$dir/owner" 2>/dev/null || true)
    [[ $owner == "$DATA_DIR" ]] ||
      die "$dir exists and does not belong to $DATA_DIR (its owner file says '${owner:-nothing}'); left alone. Set INVENTORY_DATA_DIR to another path"
    # Never deleted for us: whatever it holds was someone's data at this same path.
    say "reusing the cluster kept in $dir for an earlier data dir at this same path"
  fi
  mkdir -p "$dir"
  chmod 755 "$RELOCATE_ROOT" "$dir"
  printf '%s\n' "$DATA_DIR" >"$dir/owner"
  ln -sfn "$dir/pgdata" "$DATA_DIR/pgdata"
  ln -sfn "$dir/postgres.log" "$DATA_DIR/postgres.log"
  set_paths
}

# Said on every start of a relocated cluster, so nobody is surprised where the data went.
explain_relocation() {
  local blocked d owner
  blocked=$(first_blocked "$DATA_DIR")
  say "NOTE: this cluster's data is in $(dirname "$PGDATA_DIR"), not in $DATA_DIR:"
  say "  PostgreSQL refuses to run as root, and the OS user postgres that runs it cannot enter ${blocked:-a parent directory of $DATA_DIR}."
  say "  $DATA_DIR/pgdata and postgres.log link there. Nothing removes it but you, when you no longer need the data:"
  say "    INVENTORY_DATA_DIR=$DATA_DIR db/cluster.sh destroy --yes"
  say "  To keep the data in the checkout instead, use a checkout (or INVENTORY_DATA_DIR) that postgres can enter."
  # Clusters of data dirs that are gone are listed, never removed: they may be someone's data.
  for d in "$RELOCATE_ROOT"/*; do
    [[ -f $d/owner ]] || continue
    owner=$(cat "$d/owner")
    [[ -e $owner ]] && continue
    say "  $d belongs to $owner, which no longer exists; left alone (to delete it: INVENTORY_DATA_DIR=$owner db/cluster.sh destroy --yes)"
  done
}

# A unix socket path holds at most ~107 bytes (<dir>/.s.PGSQL.<port>); a deep data dir gets
# a short private directory of its own instead.
choose_socket_dir() {
  local base hash
  base=$(dirname "$PGDATA_DIR")/socket
  if ((${#base} + 16 <= 100)); then SOCK_DIR=$base; return 0; fi
  hash=$(printf %s "$DATA_DIR" | sha256 | cut -c1-16)
  if ((IS_ROOT)); then
    SOCK_DIR=/run/inventory-api/$hash
  else
    base=${XDG_RUNTIME_DIR:-/tmp}
    ((${#base} <= 50)) || base=/tmp
    SOCK_DIR=$base/inventory-api-$(id -u)-$hash
  fi
}

ensure_socket_dir() {
  [[ $SOCK_DIR != *"'"* ]] || die "the socket directory $SOCK_DIR must not contain a single quote"
  [[ ! -L $SOCK_DIR ]] || die "$SOCK_DIR is a symlink; refusing to put the superuser's socket there"
  if ((IS_ROOT)); then
    if [[ $SOCK_DIR == /run/inventory-api/* ]]; then
      mkdir -p /run/inventory-api
      chmod 755 /run/inventory-api
    fi
    mkdir -p "$SOCK_DIR"
    chown postgres: "$SOCK_DIR"
  else
    # Its parent exists (the data dir, XDG_RUNTIME_DIR or /tmp): -m applies to it alone.
    [[ -d $SOCK_DIR ]] || mkdir -m 700 "$SOCK_DIR"
    # /tmp is shared: a directory someone else made there is not ours to use.
    [[ -O $SOCK_DIR ]] || die "$SOCK_DIR belongs to another user; refusing to put the superuser's socket there"
  fi
  chmod 700 "$SOCK_DIR"
}

# pg_hba.conf and pg_ident.conf are ours: written at every start, so that a cluster made by an
# earlier cluster.sh gets the same rules. AUTH_CHANGED=1 when they had to be rewritten.
write_auth_files() {
  local hba ident os_user
  hba=$(cat <<'HBA'
# Written by db/cluster.sh at every start; edits here are overwritten.
# The superuser has no password: only over the private unix socket, as an OS user of the map
# inventory_admin (pg_ident.conf), by peer authentication.
local   all           postgres                 peer map=inventory_admin
local   replication   postgres                 peer map=inventory_admin
local   all           all                      reject
# Every other role: TCP on loopback with its password (SCRAM). The superuser never over TCP.
host    all           postgres    127.0.0.1/32 reject
host    all           all         127.0.0.1/32 scram-sha-256
HBA
)
  ident="# Written by db/cluster.sh at every start; edits here are overwritten."$'\n'
  ident+="# The OS users that may log in as the superuser over the private socket."$'\n'
  local -a admins=("$SERVER_USER")
  # Root can become postgres anyway; mapping it lets root's own tools (psql, the tests) in.
  ((IS_ROOT)) && admins+=(root)
  for os_user in "${admins[@]}"; do
    ident+="inventory_admin  $os_user  postgres"$'\n'
  done
  AUTH_CHANGED=0
  if [[ $(cat "$PGDATA_DIR/pg_hba.conf" 2>/dev/null) != "$hba" ]]; then
    # Written as the server's user: root never writes through a path that user controls.
    printf '%s\n' "$hba" | as_pg tee "$PGDATA_DIR/pg_hba.conf" >/dev/null
    AUTH_CHANGED=1
  fi
  if [[ $(cat "$PGDATA_DIR/pg_ident.conf" 2>/dev/null) != "${ident%$'\n'}" ]]; then
    printf '%s' "$ident" | as_pg tee "$PGDATA_DIR/pg_ident.conf" >/dev/null
    AUTH_CHANGED=1
  fi
  as_pg chmod 600 "$PGDATA_DIR/pg_hba.conf" "$PGDATA_DIR/pg_ident.conf"
}

random_password() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

# APP_PW from the env file; LEGACY_ENV=1 when the file still holds the superuser's URL (written
# by an earlier cluster.sh, when the superuser had a password).
read_env() {
  LEGACY_ENV=0
  [[ -f $ENV_FILE ]] || return 1
  APP_PW=$(sed -n 's|^DATABASE_URL=postgresql://inventory_app:\([^@]*\)@.*|\1|p' "$ENV_FILE")
  grep -q '^ADMIN_DATABASE_URL=' "$ENV_FILE" && LEGACY_ENV=1
  [[ -n $APP_PW ]]
}

database_url() { printf 'postgresql://inventory_app:%s@127.0.0.1:%s/inventory' "$APP_PW" "$1"; }

write_env() {
  local port=$1 tmp
  tmp=$(mktemp "$DATA_DIR/.env.XXXXXX") # mktemp makes it 0600
  printf 'DATABASE_URL=%s\n' "$(database_url "$port")" >"$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

init_cluster() {
  local locale=C nosync=()
  # A throwaway test cluster need not survive a power cut, so initdb need not fsync either.
  [[ ${INVENTORY_PG_FAST:-} == 1 ]] && nosync=(--no-sync)
  # C.UTF-8: byte-order collation (stable across OS upgrades) with UTF-8 character classes.
  if locale -a 2>/dev/null | grep -qixE 'c\.utf-?8'; then locale=C.UTF-8; fi
  say "initialising a new cluster in $PGDATA_DIR"
  # No --pwfile: the superuser gets no password (see write_auth_files).
  as_pg "$BINDIR/initdb" -D "$PGDATA_DIR" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
    -E UTF8 --locale="$locale" --no-instructions ${nosync[@]+"${nosync[@]}"} >&2 ||
    die "initdb failed (see above)"
  # TCP on loopback only. The unix socket's directory is given at each start (-k), as it
  # depends on where the data dir is; '' here keeps a server started by hand off
  # /var/run/postgresql. The port is also given at each start.
  as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null <<CONF

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

# Lines 4 and 5 of postmaster.pid: the port the running server listens on, its socket directory.
running_port() { sed -n 4p "$PGDATA_DIR/postmaster.pid"; }
running_socket_dir() { sed -n 5p "$PGDATA_DIR/postmaster.pid"; }

port_in_use() { (exec 5<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# For the server, which outlives us: it must hold none of our descriptors but 0-2 (which pg_ctl
# points at the log). Not our stdout (a caller reading it would never see EOF), not the lock (it
# would stay held as long as the server runs), and nothing our caller left open: uvloop's
# subprocesses (the app's lifespan under uvicorn) pass on the ends of their own pipes, so a
# worker waiting for the script's output would wait as long as the server runs. Call in a subshell.
close_inherited_fds() {
  local fd
  for fd in "/proc/$BASHPID/fd"/* /dev/fd/*; do
    fd=${fd##*/}
    # 255: bash's own handle on this script (close-on-exec already).
    if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2 && fd != 255)); then eval "exec $fd>&-"; fi
  done
}

start_server() {
  local opts="-p $PORT -k '$SOCK_DIR'"
  if [[ ${INVENTORY_PG_FAST:-} == 1 ]]; then
    # Throwaway test clusters only: a crash can lose or corrupt data, which a test never keeps.
    opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  say "starting PostgreSQL on 127.0.0.1:$PORT (log: $DATA_DIR/postgres.log)"
  if ! (close_inherited_fds && as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$LOG_FILE" -w -t 60 -o "$opts" start >&2); then
    if tail -n 20 "$LOG_FILE" | grep -q 'could not bind\|Address already in use'; then
      die "port $PORT on 127.0.0.1 is already taken by another program; set INVENTORY_PG_PORT to a free port"
    fi
    say "PostgreSQL did not start; the end of $DATA_DIR/postgres.log:"
    tail -n 20 "$LOG_FILE" >&2
    exit 1
  fi
}

stop_server() {
  as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >&2 3>&- 9>&-
}

admin_psql() {
  local port=$1
  shift
  # client_min_messages=warning: idempotent SQL raises "already exists" notices.
  PGCONNECT_TIMEOUT=10 PGOPTIONS='-c client_min_messages=warning' \
    "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$port" -U postgres "$@" >&2
}

setup_database() {
  local port=$1
  admin_psql "$port" -d postgres <<'SQL' || die "could not create database inventory (see above)"
SELECT 'CREATE DATABASE inventory' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'inventory')
\gexec
SQL
  if ((LEGACY_ENV)); then
    admin_psql "$port" -d postgres -c 'ALTER ROLE postgres PASSWORD NULL' ||
      die "could not remove the superuser's password (see above)"
    say "removed the superuser's password (an earlier cluster.sh set one): superuser access is now only over $SOCK_DIR"
  fi
  # Applies roles.sql and schema.sql only when they changed since the last apply, and sets
  # the service role's password (from the environment: never on a command line).
  PGHOST=$SOCK_DIR PGPORT=$port PGUSER=postgres PGDATABASE=inventory PGCONNECT_TIMEOUT=10 \
    PSQL=$PSQL INVENTORY_APP_PASSWORD=$APP_PW bash "$REPO/db/migrate.sh" >&2 ||
    die "db/migrate.sh failed (see above)"
}

# ---------------------------------------------------------------------------------------------
# Commands

canonical_data_dir() {
  DATA_DIR=$(cd "$DATA_DIR" && pwd -P)
  set_paths
}

cmd_start() {
  # stdout carries only the final DATABASE_URL=... line; everything else goes to stderr.
  exec 3>&1 1>&2
  ensure_bindir 0
  mkdir -p "$DATA_DIR"
  canonical_data_dir
  lock_data_dir
  prepare_layout
  if ! is_running && port_in_use "$PORT"; then
    die "port $PORT on 127.0.0.1 is already taken by another program; set INVENTORY_PG_PORT to a free port"
  fi
  if ! read_env; then
    # The superuser can always (re)set it, so a lost env file costs nothing but a new password.
    APP_PW=$(random_password)
    [[ -f $PGDATA_DIR/PG_VERSION ]] && say "$ENV_FILE is missing: the service role gets a new password"
  fi
  if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
    write_env "$PORT"
    init_cluster
  fi
  choose_socket_dir
  ensure_socket_dir
  write_auth_files
  local port=$PORT
  if is_running; then
    port=$(running_port)
    if [[ $(running_socket_dir) != "$SOCK_DIR" ]]; then
      # Superuser access goes through that socket only; a server started by an earlier
      # cluster.sh has none, so it is restarted once (clients of the service reconnect).
      say "restarting PostgreSQL on 127.0.0.1:$port to open its private socket $SOCK_DIR"
      stop_server
      PORT=$port
      start_server
    else
      say "already running on 127.0.0.1:$port"
      [[ $port == "$PORT" ]] || say "warning: running on port $port, not INVENTORY_PG_PORT=$PORT; stop it to change ports"
      if ((AUTH_CHANGED)); then as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" reload >&2; fi
    fi
  else
    start_server
  fi
  # A streaming replica (db/cluster.sh replica) is read-only and gets its schema, roles and
  # passwords from its primary.
  [[ -f $PGDATA_DIR/standby.signal ]] || setup_database "$port"
  write_env "$port"
  printf 'DATABASE_URL=%s\n' "$(database_url "$port")" >&3
}

# db/cluster.sh replica <primary data dir>: this data dir becomes a streaming replica of the
# running cluster of that data dir (pg_basebackup -R the first time; started every time).
# The replica streams over the primary's private socket as the superuser (peer
# authentication, pg_hba's `local replication` line): no replication password anywhere.
cmd_replica() {
  local primary=${1:-} primary_pgdata psock pport fast=()
  exec 3>&1 1>&2
  [[ -n $primary && -d $primary ]] || die "usage: db/cluster.sh replica <the primary's data dir>"
  primary=$(cd "$primary" && pwd -P)
  ensure_bindir 0
  mkdir -p "$DATA_DIR"
  canonical_data_dir
  [[ $DATA_DIR != "$primary" ]] || die "a cluster cannot be its own replica"
  if [[ -L $primary/pgdata ]]; then primary_pgdata=$(readlink "$primary/pgdata"); else primary_pgdata=$primary/pgdata; fi
  [[ -f $primary_pgdata/postmaster.pid ]] || die "the primary ($primary) is not running; start it first"
  pport=$(sed -n 4p "$primary_pgdata/postmaster.pid")
  psock=$(sed -n 5p "$primary_pgdata/postmaster.pid")
  # The service role's password is the primary's (roles are replicated with the data).
  APP_PW=$(sed -n 's|^DATABASE_URL=postgresql://inventory_app:\([^@]*\)@.*|\1|p' "$primary/env")
  [[ -n $APP_PW ]] || die "no service role password in $primary/env"
  lock_data_dir
  prepare_layout
  choose_socket_dir
  ensure_socket_dir
  if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
    [[ ${INVENTORY_PG_FAST:-} == 1 ]] && fast=(--no-sync)
    say "copying the primary on 127.0.0.1:$pport into $PGDATA_DIR (pg_basebackup -R)"
    as_pg "$BINDIR/pg_basebackup" -h "$psock" -p "$pport" -U postgres -D "$PGDATA_DIR" \
      -R -X stream -c fast ${fast[@]+"${fast[@]}"} >&2 || die "pg_basebackup failed (see above)"
  fi
  [[ -f $PGDATA_DIR/standby.signal ]] || die "$PGDATA_DIR is not a replica (no standby.signal)"
  write_auth_files
  if is_running; then
    say "already running on 127.0.0.1:$(running_port)"
    PORT=$(running_port)
  else
    start_server
  fi
  write_env "$PORT"
  printf 'DATABASE_URL=%s\n' "$(database_url "$PORT")" >&3
}

# For stop, status, env, psql, admin-url: nothing is created.
open_existing() {
  [[ -d $DATA_DIR ]] || return 1
  canonical_data_dir
  BINDIR=$(find_bindir 2>/dev/null) || BINDIR=
  PSQL=${BINDIR:+$BINDIR/psql}
  [[ -x ${PSQL:-} ]] || PSQL=$(command -v psql 2>/dev/null) || PSQL=psql
}

# Sets SOCK_DIR and port to the running server's, or dies.
open_running() {
  if ! open_existing || [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
    die "no cluster at $DATA_DIR yet; run: db/cluster.sh start"
  fi
  is_running || die "not running ($DATA_DIR); run: db/cluster.sh start"
  SOCK_DIR=$(running_socket_dir)
  [[ -n $SOCK_DIR ]] ||
    die "the server was started by an earlier cluster.sh, without the superuser's socket; run db/cluster.sh start once"
  RUNNING_PORT=$(running_port)
}

cmd_stop() {
  if ! open_existing || ! is_running; then
    say "not running ($DATA_DIR)"
    return 0
  fi
  lock_data_dir
  say "stopping PostgreSQL ($DATA_DIR)"
  stop_server
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
  if ! open_existing || [[ ! -f $ENV_FILE ]]; then die "no cluster at $DATA_DIR yet; run: db/cluster.sh start"; fi
  cat "$ENV_FILE"
}

cmd_psql() {
  open_running
  exec "$PSQL" -h "$SOCK_DIR" -p "$RUNNING_PORT" -U postgres -d inventory "$@"
}

# Percent-encodes what a URL query value cannot hold as is (byte-wise).
urlencode() {
  local LC_ALL=C s=$1 out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9/._~-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c"; out+=$c ;;
    esac
  done
  printf '%s' "$out"
}

cmd_admin_url() {
  open_running
  printf 'postgresql://postgres@/inventory?host=%s&port=%s\n' "$(urlencode "$SOCK_DIR")" "$RUNNING_PORT"
}

# The only command that deletes a cluster, and only this data dir's: pgdata (wherever it was
# relocated to), postgres.log, env and the socket directory; the data dir itself if that
# leaves it empty.
cmd_destroy() {
  local confirmed=0 targets=() t answer
  [[ ${1:-} == --yes ]] && confirmed=1
  if [[ -d $DATA_DIR ]]; then open_existing; fi
  if [[ -d $DATA_DIR ]]; then
    for t in "$DATA_DIR/pgdata" "$DATA_DIR/postgres.log" "$DATA_DIR/env"; do
      [[ -e $t || -L $t ]] && targets+=("$t")
    done
  fi
  if [[ -f $RELOCATED_DIR/owner && $(cat "$RELOCATED_DIR/owner") == "$DATA_DIR" ]]; then
    targets+=("$RELOCATED_DIR")
    # Its data dir (and so the link) may be gone while the server still runs from there.
    [[ -L $DATA_DIR/pgdata ]] || PGDATA_DIR=$RELOCATED_DIR/pgdata
  fi
  if ((${#targets[@]} == 0)); then
    say "no cluster at $DATA_DIR; nothing to destroy"
    return 0
  fi
  if ((!confirmed)); then
    if [[ -t 0 ]]; then
      printf 'Delete the database cluster of %s for good (%s)? Type yes: ' "$DATA_DIR" "${targets[*]}" >&2
      read -r answer
      [[ $answer == yes ]] || die "nothing deleted"
    else
      die "destroy deletes the cluster of $DATA_DIR and all its data (${targets[*]}); to confirm, run: db/cluster.sh destroy --yes"
    fi
  fi
  if [[ -d $DATA_DIR ]]; then lock_data_dir; fi
  if [[ -f $PGDATA_DIR/PG_VERSION ]]; then
    BINDIR=${BINDIR:-$(find_bindir 2>/dev/null || true)}
    if is_running; then
      say "stopping PostgreSQL ($DATA_DIR)"
      stop_server || as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >&2 3>&- 9>&-
    fi
  fi
  choose_socket_dir
  # A pgdata that holds something other than a cluster was not made here: left alone.
  if [[ -d $PGDATA_DIR && ! -f $PGDATA_DIR/PG_VERSION && -n $(ls -A "$PGDATA_DIR" 2>/dev/null) ]]; then
    die "$PGDATA_DIR is not a PostgreSQL data directory; nothing deleted"
  fi
  say "deleting the cluster of $DATA_DIR: ${targets[*]}"
  for t in "${targets[@]}"; do rm -rf -- "$t"; done
  [[ $SOCK_DIR == "$DATA_DIR"/* || $SOCK_DIR == "$RELOCATED_DIR"/* ]] || rm -rf -- "$SOCK_DIR"
  if [[ -d $DATA_DIR ]]; then
    rm -rf -- "$DATA_DIR/socket"
    rm -f -- "$DATA_DIR/.lock" "$DATA_DIR"/.env.*
    rmdir -- "$DATA_DIR" 2>/dev/null || true
  fi
}

usage() {
  echo "usage: db/cluster.sh start|stop|status|env|psql [psql args...]|admin-url|bindir|replica <primary data dir>|destroy --yes" >&2
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
  admin-url) cmd_admin_url ;;
  bindir) ensure_bindir 1; echo "$BINDIR" ;;
  destroy) cmd_destroy "$@" ;;
  replica) cmd_replica "$@" ;;
  *) usage ;;
esac

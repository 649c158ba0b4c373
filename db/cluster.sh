#!/usr/bin/env bash
# The embedded, private PostgreSQL cluster of the Inventory API: the command line of the
# cluster manager in app/cluster/ (python -m app.cluster, which documents each command).
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
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

# The manager needs Python's standard library only: the checkout's .venv where it runs (it may
# not exist yet, or be another machine's), else python3.
python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
PYTHON=$REPO/.venv/bin/python
if ! python_ok "$PYTHON"; then
  PYTHON=python3
  python_ok "$PYTHON" || { echo "cluster.sh: Python 3.11 or newer is needed (python3)" >&2; exit 1; }
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
# -P: the caller's directory stays off the module path (an app/ of its own there would win).
exec "$PYTHON" -P -m app.cluster "$@"

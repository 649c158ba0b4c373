#!/usr/bin/env bash
# The benchmark in one command: bench/run.sh [--rows N] [--duration S] (see bench/bench.py -h).
# Needs PostgreSQL (db/cluster.sh installs it), pgbench, psql, curl and wrk; installs wrk with
# apt-get when it is missing and we are root on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v wrk >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing wrk" >&2
    apt-get install -y -q wrk >&2 || { apt-get update -q >&2 && apt-get install -y -q wrk >&2; }
  else
    echo "bench: wrk is needed (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)" >&2
    exit 1
  fi
fi
exec ./run.sh bench "$@"

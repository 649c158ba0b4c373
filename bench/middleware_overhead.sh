#!/usr/bin/env bash
# Requests/s of GET /healthz with and without the request middleware (ObserveRequests: request
# id, metrics, JSON log line; BodyGuard), one uvicorn worker, wrk on loopback, bounded:
# ROUNDS x 2 runs of SECONDS each. Needs wrk. Prints each run and the median ratio.
#   DATABASE_URL=... bench/middleware_overhead.sh      (any reachable database; /healthz never queries it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-3} SECONDS_PER_RUN=${SECONDS_PER_RUN:-5} CONNECTIONS=${CONNECTIONS:-16}
: "${DATABASE_URL:?set DATABASE_URL}"
export DATABASE_URL INVENTORY_POOL_SIZE=1
mkdir -p bench/results
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

run() { # $1: factory name; prints requests/s
  .venv/bin/uvicorn --factory "bench.apps:$1" --host 127.0.0.1 --port "$port" --no-access-log \
    >"bench/results/uvicorn-$1.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$port/healthz" |
    awk '/Requests\/sec/ {print $2}'
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

with=() without=()
for round in $(seq "$ROUNDS"); do
  without+=("$(run without_middleware)")
  with+=("$(run with_middleware)")
  echo "round $round: without ${without[-1]} req/s, with ${with[-1]} req/s"
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
w=$(median "${with[@]}") wo=$(median "${without[@]}")
echo "median: without $wo req/s, with $w req/s, ratio $(echo "scale=3; $w / $wo" | bc)"

"""Two instances behind PgBouncer and HAProxy next to one instance straight to PostgreSQL.

Starts a throwaway cluster (fsync on) and loads products as bench.py does, then measures
with wrk GET /products/{sku}, GET /products?limit=50 and POST /products against, in
alternating rounds (this machine's load drifts):

- direct: one uvicorn with 2 workers, DATABASE_URL the cluster (what ./run.sh serves);
- scaled: HAProxy (db/haproxy.cfg) -> two uvicorns of 1 worker each, INVENTORY_PGBOUNCER=1,
  DATABASE_URL a PgBouncer in transaction mode (db/pgbouncer.sh) -> the same cluster.

Both have 2 worker processes and 4 pool connections per worker. On one 2-core machine this
shows what the extra hops cost, not what more machines gain: every process shares the
same two cores with wrk and PostgreSQL.

    ./run.sh bench scale [--rows N] [--duration S] [--rounds R] [--connections C]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Run as a script, bench/ is on the path: its bench.py brings the cluster, service and wrk.
from bench import BENCH, REPO, cluster, free_port, load, say, service, wrk

ENDPOINTS = ("lookup", "page", "create")
POOL = {"INVENTORY_POOL_SIZE": "4"}


@contextmanager
def pgbouncer(tmp: Path, database_url: str) -> Iterator[str]:
    """PgBouncer in front of the cluster of `database_url`: yields the URL through it."""
    url = urlsplit(database_url)
    env = {
        **os.environ,
        "INVENTORY_BOUNCER_DIR": str(tmp / "pgbouncer"),
        "INVENTORY_BOUNCER_PORT": str(free_port()),
        # Server connections: as many as the direct setup's pools hold together.
        "INVENTORY_BOUNCER_POOL_SIZE": "8",
        "INVENTORY_PG_PORT": str(url.port),
        "INVENTORY_APP_PASSWORD": url.password or "",
    }
    script = str(REPO / "db" / "pgbouncer.sh")
    out = subprocess.run(
        ["bash", script, "start"], env=env, check=True, text=True, stdout=subprocess.PIPE
    ).stdout
    try:
        yield out.strip().removeprefix("DATABASE_URL=")
    finally:
        subprocess.run(["bash", script, "stop"], env=env, check=False)


@contextmanager
def haproxy(backends: list[str]) -> Iterator[str]:
    """HAProxy with db/haproxy.cfg in front of `backends` (URLs): yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "INVENTORY_LB_BIND": f"127.0.0.1:{port}",
        "INVENTORY_API_1": urlsplit(backends[0]).netloc,
        "INVENTORY_API_2": urlsplit(backends[1]).netloc,
    }
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    # As root, as an unprivileged user (the config only binds a high port).
    runner = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    proc = subprocess.Popen(
        [*runner, binary, "-db", "-f", str(REPO / "db" / "haproxy.cfg")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(3)  # listening, and both backends seen up by the health check
        assert proc.poll() is None, "haproxy exited at start-up"
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("wrk", "pgbouncer", "haproxy"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"bench: {tool} is needed (Debian: apt-get install -y {tool})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    tmp = Path(tempfile.mkdtemp(prefix="inventory-bench-scale-"))
    tmp.chmod(0o755)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        side: {e: [] for e in ENDPOINTS} for side in ("direct", "scaled")
    }
    try:
        with cluster(tmp) as urls, ExitStack() as stack:
            say(f"loading {args.rows} products")
            load(urls["ADMIN_DATABASE_URL"], args.rows)
            direct, _ = stack.enter_context(
                service(urls["DATABASE_URL"], 2, tmp, POOL, name="direct")
            )
            bounced = stack.enter_context(pgbouncer(tmp, urls["DATABASE_URL"]))
            scaled_env = {
                **POOL,
                "INVENTORY_PGBOUNCER": "1",
                "INVENTORY_LISTEN_DATABASE_URL": urls["DATABASE_URL"],
            }
            instances = [
                stack.enter_context(service(bounced, 1, tmp, scaled_env, name=f"instance-{n}"))[0]
                for n in (1, 2)
            ]
            scaled = stack.enter_context(haproxy(instances))
            for round_ in range(args.rounds):
                for side, url in (("direct", direct), ("scaled", scaled)):
                    for endpoint in ENDPOINTS:
                        say(f"round {round_ + 1}: {side} {endpoint}")
                        result = wrk(url, endpoint, args.connections, args.duration, args.rows, tmp)
                        runs[side][endpoint].append(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'':<10}" + "".join(f"{e + ' req/s':>16}{'p99 ms':>9}" for e in ENDPOINTS))
    for side in ("direct", "scaled"):
        cells = []
        for endpoint in ENDPOINTS:
            rps = statistics.median(r["rps"] for r in runs[side][endpoint])
            p99 = statistics.median(r["p99_ms"] for r in runs[side][endpoint])
            errors = sum(r["errors"] for r in runs[side][endpoint])
            cells.append(f"{rps:>16,.0f}{p99:>9.1f}" + (f" ({errors} errors)" if errors else ""))
        print(f"{side:<10}" + "".join(cells))
    out = BENCH / "results" / time.strftime("scale-%Y%m%dT%H%M%SZ.json", time.gmtime())
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    print(f"\n{out}")


if __name__ == "__main__":
    main()

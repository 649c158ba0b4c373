"""The Inventory API against its ceilings, side by side in one run (see docs/performance.md).

Starts a throwaway PostgreSQL cluster (app.cluster, temp dir, free port) and the service as
recommended for production on 2 cores (uvicorn, 2 workers, uvloop + httptools), loads
products, then measures:
  - HTTP (wrk): POST /products, GET /products/{sku}, GET /products?limit=50 and the framework
    ceiling GET /ceiling of bench/ceiling.py (a plain FastAPI app, same server and workers),
    at 32 and 64 connections;
  - the same statements through pgbench -M prepared: the database's ceiling;
  - exporting every product: GET /products (JSON, CSV) vs psql \\copy of the same rows;
  - importing products: POST /products/import vs a plain COPY of the same file.
Load generators share the 2 cores with the server and the database. Prints a table and
writes JSON to bench/results/. Everything it starts is stopped on exit or Ctrl-C.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.cluster import Cluster  # noqa: E402
from app.listing import queries as listing  # noqa: E402
from app.products import queries as products  # noqa: E402

BENCH = REPO / "bench"
VENV_BIN = REPO / ".venv" / "bin"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kwargs)


# ------------------------------------------------------------------------------------------
# Database and service


@contextmanager
def cluster(tmp: Path) -> Iterator[dict[str, str]]:
    """A throwaway cluster with production settings (fsync and synchronous commit on):
    DATABASE_URL (the service role) and ADMIN_DATABASE_URL (the superuser's socket URL,
    for psql and the loaders)."""
    db = Cluster(tmp / "db", port=free_port())
    try:
        urls = {"DATABASE_URL": db.start(), "ADMIN_DATABASE_URL": db.admin_url()}
        yield urls
    finally:
        db.stop()


@contextmanager
def service(
    database_url: str,
    workers: int,
    log_dir: Path,
    settings: dict[str, str] | None = None,
    app: str = "app.main:app",
    name: str = "service",
    checkout: Path = REPO,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    # The defaults a user gets: no INVENTORY_* setting unless --setting asks for one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVENTORY_")}
    env.update({"DATABASE_URL": database_url, **(settings or {})})
    cmd = [
        str(VENV_BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    # One JSON access-log line per request (app/core/observability.py), as in production; kept
    # in a file here, or they would bury the results.
    log = (log_dir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        cmd, cwd=checkout, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    tail = (log_dir / f"{name}.log").read_text()[-2000:]
                    raise RuntimeError(f"uvicorn exited at start-up:\n{tail}") from None
                time.sleep(0.1)
        time.sleep(1.0)  # every worker up, pools filled
        yield url, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def tree_rss(pid: int) -> int:
    """RSS in bytes of a process and all its descendants (the uvicorn workers)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


@contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, int]]:
    result = {"peak": tree_rss(pid), "start": tree_rss(pid)}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            result["peak"] = max(result["peak"], tree_rss(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


def psql(url: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, *args], **kwargs)


def load(admin_url: str, rows: int) -> None:
    psql(
        admin_url,
        "-c",
        "INSERT INTO products (sku, name, description, price, quantity) "
        "SELECT 'BENCH-' || i, 'Product ' || i, CASE WHEN i % 3 = 0 THEN NULL "
        "ELSE 'A \"fine\" product, number ' || i END, (i % 100000) / 100.0, i % 1000 "
        f"FROM generate_series(1, {rows}) i",
        "-c",
        "VACUUM ANALYZE products",
    )


# ------------------------------------------------------------------------------------------
# HTTP through wrk

WRK_REPORT = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    "WRK_JSON {\\"requests\\": %d, \\"seconds\\": %f, \\"errors\\": %d, "
    .. "\\"p50_ms\\": %f, \\"p99_ms\\": %f}\\n",
    summary.requests, summary.duration / 1e6, errors,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""

WRK_SCRIPTS = {
    "lookup": """
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  return wrk.format("GET", "/products/bench-" .. math.random(1, ROWS))
end
""",
    "create": """
-- Each wrk thread has its own Lua state: a random tag per thread keeps SKUs unique.
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
local thread_tag = string.format("%x%x", math.random(1, 2^30), os.time() % 65536)
local counter = 0
request = function()
  counter = counter + 1
  local body = '{"sku":"W-' .. thread_tag .. '-' .. counter
    .. '","name":"Bench mug","price":"19.99","quantity":3}'
  return wrk.format("POST", "/products", {["Content-Type"] = "application/json"}, body)
end
""",
    "page": """
request = function()
  return wrk.format("GET", "/products?limit=50")
end
""",
    "ceiling": """
request = function()
  return wrk.format("GET", "/ceiling")
end
""",
}


def wrk(
    url: str, name: str, connections: int, duration: int, rows: int, tmp: Path
) -> dict[str, Any]:
    script = tmp / f"{name}.lua"
    script.write_text(WRK_SCRIPTS[name].replace("ROWS", str(rows)) + WRK_REPORT)
    out = run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s",
         "-s", str(script), url],
        stdout=subprocess.PIPE,
    ).stdout  # fmt: skip
    found = re.search(r"^WRK_JSON (.*)$", out, re.M)
    assert found, out
    result: dict[str, Any] = json.loads(found.group(1))
    result["rps"] = result["requests"] / result["seconds"]
    return result


def http(
    url: str, ceiling_url: str, args: argparse.Namespace, tmp: Path, pid: int
) -> dict[str, Any]:
    results: dict[str, Any] = {name: {} for name in ("lookup", "create", "page", "ceiling")}
    results["rss_at_rest_mb"] = tree_rss(pid) / 2**20
    with peak_rss(pid) as rss:
        _http_runs(url, ceiling_url, args, tmp, results)
    results["rss_under_load_mb"] = rss["peak"] / 2**20
    return results


def _http_runs(
    url: str, ceiling_url: str, args: argparse.Namespace, tmp: Path, results: dict[str, Any]
) -> None:
    for conns in args.connections:
        say(f"wrk ceiling -c {conns}")
        ceilings = [wrk(ceiling_url, "ceiling", conns, args.duration, args.rows, tmp)]
        for name in ("lookup", "page", "create"):
            say(f"wrk {name} -c {conns}, then the ceiling again")
            result = wrk(url, name, conns, args.duration, args.rows, tmp)
            ceilings.append(wrk(ceiling_url, "ceiling", conns, args.duration, args.rows, tmp))
            result["ceiling_rps"] = (ceilings[-2]["rps"] + ceilings[-1]["rps"]) / 2
            results[name][conns] = result
        mean = statistics.mean(c["rps"] for c in ceilings)
        results["ceiling"][conns] = {
            **ceilings[-1],
            "rps": mean,
            "ceiling_rps": mean,
            "rps_runs": [c["rps"] for c in ceilings],
        }


# ------------------------------------------------------------------------------------------
# The database's ceiling through pgbench


def pgbench_scripts() -> dict[str, str]:
    def numbered(sql: str, values: dict[str, str]) -> str:
        return re.sub(r"%\((\w+)\)s", lambda m: values[m.group(1)], " ".join(sql.split()))

    page_sql = listing.Listing(limit=50).page().sql
    return {
        "lookup": "\\set i random(1, ROWS)\n"
        # The coalesced lookup's statement, one SKU a time: what a lone lookup runs.
        + numbered(products._GET_MANY.sql, {"skus": "ARRAY['bench-' || :i]"})
        + ";\n",
        "create": "\\set r random(1, 9000000000000000000)\n"
        + numbered(
            products._INSERT.sql,
            {
                "sku": "'P-' || :client_id || '-' || :r",
                "name": "'Bench mug'",
                "description": "NULL",
                "price": "19.99",
                "quantity": "3",
                "reorder_point": "NULL",
            },
        )
        + ";\n",
        "page": numbered(page_sql, {"limit": "51"}) + ";\n",
    }


def pgbench(
    url: str, name: str, clients: int, duration: int, rows: int, tmp: Path
) -> dict[str, Any]:
    script = tmp / f"pgbench-{name}.sql"
    script.write_text(pgbench_scripts()[name].replace("ROWS", str(rows)))
    logs = tmp / f"pgbench-{name}-{clients}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    out = run(
        ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(duration),
         "-f", str(script), "-l", "--log-prefix", str(logs / "log"), url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ).stdout  # fmt: skip
    latencies = []
    for log in logs.iterdir():
        for line in log.read_text().splitlines():
            latencies.append(int(line.split()[2]) / 1000)
    latencies.sort()
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert tps, out
    return {
        "rps": float(tps.group(1)),
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "errors": int(failed.group(1)) if failed else 0,
    }


# ------------------------------------------------------------------------------------------
# Export and import


def timed(cmd: str) -> tuple[float, str]:
    started = time.monotonic()
    out = run(["bash", "-o", "pipefail", "-c", cmd], stdout=subprocess.PIPE).stdout
    return time.monotonic() - started, out.strip()


def export(url: str, admin_url: str, pid: int, repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    order = " ORDER BY p.created_at, p.id"
    copies = {
        "json": f"\\copy (SELECT product_json(p) FROM products p{order}) to stdout",
        "csv": f"\\copy (SELECT (product_fields(p)).* FROM products p{order}) "
        "to stdout with (format csv, header)",
    }
    accepts = {"json": "application/json", "csv": "text/csv"}
    for fmt in ("json", "csv"):
        service_runs, psql_runs = [], []
        for _ in range(repeats):
            with peak_rss(pid) as rss:
                seconds, size = timed(
                    f"curl -sf -o /dev/null -w '%{{size_download}}' -H 'Accept: {accepts[fmt]}' "
                    f"{url}/products"
                )
            service_runs.append((seconds, int(size), rss["peak"], rss["start"]))
            command = copies[fmt].replace("'", "'\\''")
            seconds, size = timed(f"psql -X -q '{admin_url}' -c '{command}' | wc -c")
            psql_runs.append((seconds, int(size)))
        best = min(service_runs)
        base = min(psql_runs)
        results[fmt] = {
            "service_seconds": best[0],
            "service_bytes": best[1],
            "service_peak_rss_mb": max(r[2] for r in service_runs) / 2**20,
            "service_rss_before_mb": best[3] / 2**20,
            "psql_seconds": base[0],
            "psql_bytes": base[1],
            # Throughput against psql's: rows per second of the service / of psql \copy.
            "ratio": base[0] / best[0],
        }
    return results


def import_file(path: Path, rows: int) -> None:
    with path.open("w") as f:
        f.write("sku,name,description,price,quantity\n")
        for i in range(1, rows + 1):
            desc = "" if i % 3 == 0 else f'"Imported, ""quoted"" product {i}"'
            f.write(f"IMP-{i},Imported product {i},{desc},{i % 100000 / 100:.2f},{i % 1000}\n")


def imports(
    url: str, admin_url: str, pid: int, rows: int, tmp: Path, repeats: int
) -> dict[str, Any]:
    path = tmp / "import.csv"
    import_file(path, rows)
    reset = ["-c", "DELETE FROM products WHERE sku LIKE 'IMP-%'", "-c", "VACUUM ANALYZE products"]
    # The card's table bare: its columns, defaults, CHECKs, primary key and unique SKU,
    # without our other indexes, triggers and change log.
    psql(
        admin_url,
        "-c",
        "CREATE TABLE bare_products (LIKE products INCLUDING DEFAULTS INCLUDING IDENTITY "
        "INCLUDING CONSTRAINTS INCLUDING GENERATED, PRIMARY KEY (id))",
        "-c",
        "CREATE UNIQUE INDEX ON bare_products (lower(sku))",
    )
    service_runs, copy_runs, bare_runs = [], [], []
    for _ in range(repeats):
        for table, runs in (("products", copy_runs), ("bare_products", bare_runs)):
            command = (
                f"\\copy {table} (sku, name, description, price, quantity) from '{path}' "
                "with (format csv, header)"
            )
            seconds, _ = timed(f"psql -X -q -v ON_ERROR_STOP=1 '{admin_url}' -c \"{command}\"")
            runs.append(seconds)
        psql(admin_url, *reset, "-c", "TRUNCATE bare_products")
        with peak_rss(pid) as rss:
            seconds, out = timed(
                f"curl -sf -X POST -H 'Content-Type: text/csv' --data-binary @{path} "
                f"{url}/products/import"
            )
        assert json.loads(out)["created"] == rows, out
        service_runs.append((seconds, rss["peak"], rss["start"]))
        psql(admin_url, *reset)
    return {
        "rows": rows,
        "bytes": path.stat().st_size,
        "service_seconds": min(service_runs)[0],
        "service_peak_rss_mb": max(r[1] for r in service_runs) / 2**20,
        "service_rss_before_mb": min(service_runs)[2] / 2**20,
        "copy_seconds": min(copy_runs),
        "bare_copy_seconds": min(bare_runs),
        # Throughput against COPY's: rows per second of the service / of psql \copy.
        "ratio": min(copy_runs) / min(service_runs)[0],
        # The service's time in multiples of \copy into the card's bare table.
        "times_bare": min(service_runs)[0] / min(bare_runs),
    }


# ------------------------------------------------------------------------------------------


# The targets (docs/performance.md): ratios to the ceiling (HTTP) or to psql (bulk), the
# p99 at 64 connections, an import's time in multiples of \copy into the card's bare
# table, and the resident memory of the supervisor and its workers.
TARGETS = {"lookup": 0.35, "create": 0.2, "page": 0.16}
P99_TARGETS_MS = {"lookup": 40.0, "create": 40.0, "page": 40.0}
BULK_TARGETS = {"json": 0.9, "csv": 0.8, "import": 0.9}
IMPORT_TIMES_BARE_TARGET = 2.0
RSS_TARGET_MB = 180.0
# What one run measures, in this order; --only picks some.
PARTS = ("http", "pgbench", "export", "import")


def _verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    if "http" in results:
        lines += _http_table(results)
    if "export" in results:
        lines += _export_table(results)
    if "import" in results:
        lines += _import_table(results)
    return "\n".join(lines)


_NAMES = {
    "lookup": "GET /products/{sku}",
    "create": "POST /products",
    "page": "GET /products?limit=50",
    "ceiling": "GET /ceiling (bench/ceiling.py)",
}


def _http_table(results: dict[str, Any]) -> list[str]:
    lines = []
    http = results["http"]
    names = _NAMES
    lines.append(
        f"{'HTTP (wrk)':<32}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'/ceiling':>10}{'target':>8}{'':>9}{'pgbench tps':>13}"
    )
    for name in ("lookup", "create", "page", "ceiling"):
        for conns, r in sorted(http[name].items()):
            ratio = r["rps"] / r["ceiling_rps"]
            target = TARGETS.get(name)
            verdict = _verdict(ratio >= target) if target else ""
            pg = results.get("pgbench", {}).get(name, {}).get(conns)
            lines.append(
                f"{names[name]:<32}{conns:>6}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}{r['errors']:>8}{ratio:>10.2f}{target or '':>8}{verdict:>9}"
                + (f"{pg['rps']:>13.0f}" if pg else "")
            )
    for name, limit in P99_TARGETS_MS.items():
        if 64 in http[name]:
            p99 = http[name][64]["p99_ms"]
            lines.append(
                f"p99 of {names[name]} at 64 connections: {p99:.1f} ms "
                f"(target <= {limit:.0f} ms: {_verdict(p99 <= limit)})"
            )
    lines.append(
        f"resident memory, supervisor + workers: {http['rss_at_rest_mb']:.0f} MiB at rest, "
        f"{http['rss_under_load_mb']:.0f} MiB at most under load (target <= "
        f"{RSS_TARGET_MB:.0f} MiB: "
        f"{_verdict(max(http['rss_at_rest_mb'], http['rss_under_load_mb']) <= RSS_TARGET_MB)})"
    )
    lines.append("")
    lines.append(f"{'pgbench -M prepared':<32}{'clients':>7}{'tps':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for name, by_clients in results.get("pgbench", {}).items():
        for clients, r in sorted(by_clients.items()):
            lines.append(
                f"{names[name]:<32}{clients:>7}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}"
            )
    lines.append("")
    return lines


def _export_table(results: dict[str, Any]) -> list[str]:
    lines = []
    lines.append(
        f"{'export (' + str(results['rows']) + ' rows)':<32}{'service s':>10}{'psql s':>9}"
        f"{'x psql':>8}{'target':>8}{'':>9}{'MB':>8}{'peak RSS MB':>13}"
    )
    for fmt, r in results["export"].items():
        target = BULK_TARGETS[fmt]
        lines.append(
            f"{'GET /products ' + fmt:<32}{r['service_seconds']:>10.2f}{r['psql_seconds']:>9.2f}"
            f"{r['ratio']:>8.2f}{target:>8}{_verdict(r['ratio'] >= target):>9}"
            f"{r['service_bytes'] / 1e6:>8.1f}{r['service_peak_rss_mb']:>13.1f}"
        )
    return lines


def _import_table(results: dict[str, Any]) -> list[str]:
    lines = []
    r = results["import"]
    lines.append("")
    lines.append(
        f"{'import (' + str(r['rows']) + ' rows)':<32}{'service s':>10}{'COPY s':>9}"
        f"{'x COPY':>8}{'target':>8}{'':>9}{'MB':>8}{'peak RSS MB':>13}"
    )
    target = BULK_TARGETS["import"]
    lines.append(
        f"{'POST /products/import':<32}{r['service_seconds']:>10.2f}{r['copy_seconds']:>9.2f}"
        f"{r['ratio']:>8.2f}{target:>8}{_verdict(r['ratio'] >= target):>9}"
        f"{r['bytes'] / 1e6:>8.1f}{r['service_peak_rss_mb']:>13.1f}"
    )
    times, limit = r["times_bare"], IMPORT_TIMES_BARE_TARGET
    lines.append(
        f"import: {times:.2f} x the time of \\copy into the card's bare table "
        f"({r['bare_copy_seconds']:.2f} s; target <= {limit:g} x: {_verdict(times <= limit)})"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="products to load/export/import"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per HTTP/pgbench run")
    parser.add_argument("--connections", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument(
        "--service-dir",
        type=Path,
        default=REPO,
        help="serve the app of another checkout (a baseline: git worktree add DIR REV)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an INVENTORY_* setting for the service (default: none, as a user gets it)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="export/import runs (best kept)")
    parser.add_argument(
        "--only",
        type=lambda value: set(value.split(",")),
        default=set(PARTS),
        metavar=",".join(PARTS),
        help="run only these parts (e.g. export,import: the bulk paths, minutes not half an hour)",
    )
    args = parser.parse_args()
    if not args.only <= set(PARTS):
        parser.error(f"--only takes some of {','.join(PARTS)}")
    settings = dict(item.split("=", 1) for item in args.setting)
    for tool in ("wrk", "pgbench", "psql", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is needed (Debian: apt-get install -y {tool})")

    # Ctrl-C and SIGTERM unwind through every finally: servers and cluster stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    tmp = Path(tempfile.mkdtemp(prefix="inventory-bench-"))
    tmp.chmod(0o755)  # the postgres OS user (the server, as root) keeps the cluster in here
    results: dict[str, Any] = {
        "rows": args.rows,
        "duration_s": args.duration,
        "workers": args.workers,
        "settings": args.setting,
        "cpus": os.cpu_count(),
        "load_generators": "wrk -t2 and pgbench -j2 on the same machine and cores as the "
        "server and database",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        with cluster(tmp) as urls:
            app_url, admin_url = urls["DATABASE_URL"], urls["ADMIN_DATABASE_URL"]
            say(f"loading {args.rows} products")
            load(admin_url, args.rows)
            ceiling = service(app_url, args.workers, tmp, app="bench.ceiling:app", name="ceiling")
            with (
                service(app_url, args.workers, tmp, settings, checkout=args.service_dir) as (
                    url,
                    proc,
                ),
                ceiling as (ceiling_url, _),
            ):
                # The ceiling runs before and after every endpoint: each ratio compares runs
                # minutes apart at most, on a machine whose load drifts.
                if "http" in args.only:
                    results["http"] = http(url, ceiling_url, args, tmp, proc.pid)
                if "pgbench" in args.only:
                    results["pgbench"] = {}
                    for name in ("lookup", "page", "create"):
                        results["pgbench"][name] = {}
                        for conns in args.connections:
                            say(f"pgbench {name} -c {conns}")
                            results["pgbench"][name][conns] = pgbench(
                                app_url, name, conns, args.duration, args.rows, tmp
                            )
                psql(admin_url, "-c", "DELETE FROM products WHERE sku !~ '^BENCH-'",
                     "-c", "VACUUM ANALYZE products")  # fmt: skip
                if "export" in args.only:
                    say("export")
                    results["export"] = export(url, admin_url, proc.pid, args.repeats)
                if "import" in args.only:
                    say("import")
                    results["import"] = imports(
                        url, admin_url, proc.pid, args.rows, tmp, args.repeats
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(results))
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    say(f"results in {out.relative_to(REPO)}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

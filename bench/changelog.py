"""What the change log costs, side by side in one run: log on against log off, this machine.

Starts a throwaway cluster (production settings: fsync on) with two databases made by
schema.sql, and the service on each as a user runs it (uvicorn, 2 workers, the defaults):

- on:  the schema as it is;
- off: the same schema with the change log's triggers disabled (ALTER TABLE ... DISABLE
       TRIGGER for every trigger calling a product_changes_* function): nothing is written,
       nothing is numbered, and everything else (tables, indexes, the other triggers, the
       service's own background work) is the same. That is the baseline.

Measures, alternating on and off where a measurement repeats (this machine's load drifts),
each run from the same state (both databases vacuumed and analyzed, then a checkpoint):
- pgbench: the API's adjustment statement, 16 clients;
- HTTP (wrk): POST /products and POST /products/{sku}/adjustments;
- stock counts (POST /products/import?on_conflict=update, sku,quantity files) changing
  8,000 / 32,000 / 128,000 quantities of --products products;
- an import of --million new products, then the same file as a stock count with every
  quantity changed;
- CPU at idle: every process of the cluster and of the "on" service (the "off" one is
  stopped) over --idle-seconds, nothing written, with --streams change streams open; then how
  long one change takes to reach them. For comparison, the same with no service at all and a
  bare FastAPI app (bench/ceiling.py) on the same server: what PostgreSQL and uvicorn cost
  idle by themselves.
Prints the targets of issue 18, each with its number and whether it is met, and writes JSON
to bench/results/.

    ./run.sh bench changelog [--products N] [--million N] [--duration S] [--rounds R]
                             [--only pgbench,http,counts,million,idle]
"""

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The repository, for app; bench/ is on the path already (run as a script): its bench.py
# brings the cluster, the service and wrk.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.products import stock_queries as stock
from bench import BENCH, REPO, WRK_SCRIPTS, cluster, psql, say, service, wrk

SIDES = ("off", "on")
PARTS = ("pgbench", "http", "counts", "million", "idle")
COUNTS = (8_000, 32_000, 128_000)

WRK_SCRIPTS["adjust"] = """
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  return wrk.format("POST", "/products/bench-" .. math.random(1, ROWS) .. "/adjustments",
    {["Content-Type"] = "application/json"}, '{"delta":1,"reason":"received"}')
end
"""

# The change log's triggers: every one whose function is one of the log's.
LOG_TRIGGERS = """
    SELECT format('ALTER TABLE %s DISABLE TRIGGER %I', t.tgrelid::regclass, t.tgname)
    FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
    WHERE NOT t.tgisinternal AND p.proname LIKE 'product_changes%'
"""


def database_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def make_database(admin_url: str, name: str, *, log: bool) -> None:
    psql(admin_url, "-c", f"CREATE DATABASE {name}")
    url = database_url(admin_url, name)
    psql(url, "-f", str(REPO / "schema.sql"))
    if not log:
        disable = psql(url, "-At", "-c", LOG_TRIGGERS, capture_output=True).stdout.split("\n")
        psql(url, *(arg for statement in disable if statement for arg in ("-c", statement)))


def load(url: str, rows: int) -> None:
    """rows products BENCH-1.., logged set-wise on the "on" side (one statement)."""
    psql(
        url,
        "-c",
        "BEGIN; SET LOCAL inventory.change_log = bulk; "
        "INSERT INTO products (sku, name, description, price, quantity) "
        "SELECT 'BENCH-' || i, 'Product ' || i, 'A fine product, number ' || i, "
        f"(i % 100000) / 100.0, i % 1000 FROM generate_series(1, {rows}) i; COMMIT",
        "-c",
        "VACUUM ANALYZE",
    )


def settle(admin_urls: list[str]) -> None:
    """Start each measurement from the same state on both sides: nothing left for
    autovacuum, dirty pages written (a checkpoint), so neither pays for the other's past."""
    for url in admin_urls:
        psql(url, "-q", "-c", "VACUUM ANALYZE")
    psql(admin_urls[0], "-q", "-c", "CHECKPOINT")


def numbered(url: str) -> None:
    """Wait until the service has numbered everything committed (nothing left for it)."""
    for _ in range(600):
        out = psql(
            url,
            "-At",
            "-c",
            "SELECT count(*) FROM product_change_events e WHERE e.k = 1 AND NOT EXISTS "
            "(SELECT FROM product_change_batches b WHERE b.stmt = e.stmt)",
            capture_output=True,
        ).stdout.strip()
        if out == "0":
            return
        time.sleep(0.5)
    raise RuntimeError("events left unnumbered")


# ------------------------------------------------------------------------------------------


def pgbench_adjust(url: str, clients: int, duration: int, rows: int, tmp: Path) -> float:
    """tps of the API's adjustment statement."""
    values = {
        **{name: repr(value) for name, value in stock._ADJUST.defaults.items()},
        "sku": "'bench-' || :i",
        "delta": "1",
        "reason": "'received'",
        "note": "NULL",
    }
    sql = re.sub(r"%\((\w+)\)s", lambda m: values[m.group(1)], " ".join(stock._ADJUST.sql.split()))
    script = tmp / "pgbench-adjust.sql"
    script.write_text(f"\\set i random(1, {rows})\n{sql};\n")
    out = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(duration),
         "-f", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    assert found, out
    return float(found.group(1))


def post_file(url: str, path: Path, query: str = "") -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    out = subprocess.run(
        ["curl", "-sf", "-X", "POST", "-H", "Content-Type: text/csv", "--data-binary",
         f"@{path}", f"{url}/products/import{query}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return time.monotonic() - started, json.loads(out)


def count_file(path: Path, prefix: str, rows: int, offset: int) -> None:
    """A stock count of products prefix1..rows: every quantity changed (by offset).

    Millions apart: the adjustments measured before (pgbench, HTTP) move quantities by
    thousands, and one that landed on its count's number made that count one short."""
    with path.open("w") as f:
        f.write("sku,quantity\n")
        for i in range(1, rows + 1):
            f.write(f"{prefix}{i},{1_000_000 * (offset + 1) + i % 997}\n")


def new_file(path: Path, rows: int) -> None:
    with path.open("w") as f:
        f.write("sku,name,description,price,quantity\n")
        for i in range(1, rows + 1):
            f.write(f"IMP-{i},Imported product {i},Imported number {i},{i % 100000 / 100:.2f},"
                    f"{i % 1000}\n")  # fmt: skip


# ------------------------------------------------------------------------------------------
# CPU at idle


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants, living and reaped."""
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
            todo.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def postmaster_pid(admin_url: str) -> int:
    data_dir = psql(admin_url, "-At", "-c", "SHOW data_directory", capture_output=True)
    return int(Path(data_dir.stdout.strip(), "postmaster.pid").read_text().split()[0])


@contextmanager
def streams(url: str, after: int, count: int) -> Iterator[list[tuple[float, str]]]:
    """count open GET /changes/stream after `after`; yields (arrival time, line) of every
    event line."""
    seen: list[tuple[float, str]] = []
    procs = []
    for _ in range(count):
        proc = subprocess.Popen(
            ["curl", "-sN", f"{url}/changes/stream?after={after}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)

        def read(proc: subprocess.Popen[str] = proc) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("data:"):
                    seen.append((time.monotonic(), line))

        threading.Thread(target=read, daemon=True).start()
    try:
        time.sleep(1)
        yield seen
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds of each process tree over `seconds`, after settling."""
    time.sleep(5)  # settled: streams connected, the checkpoint's aftermath over
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}


def idle(on: dict[str, Any], admin_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """CPU of the cluster and of the "on" service over idle_seconds with streams open and
    nothing written; then how long one change takes to reach every stream."""
    pids = {"postgres": postmaster_pid(admin_url), "service": on["proc"].pid}
    last = psql(on["admin"], "-At", "-c", "SELECT product_changes_last_seq()", capture_output=True)
    with streams(on["url"], int(last.stdout.strip()), args.streams) as seen:
        used = idle_cpu(pids, args.idle_seconds)
        # Then one change: how long until every open stream has it.
        sent = time.monotonic()
        request = urllib.request.Request(
            f"{on['url']}/products",
            data=json.dumps({"sku": f"IDLE-{int(sent)}", "name": "n", "price": "1"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request).read()
        while len(seen) < args.streams and time.monotonic() - sent < 10:
            time.sleep(0.01)
        latency = max(at for at, _ in seen) - sent if len(seen) == args.streams else None
    total = sum(used.values())
    return {
        "seconds": args.idle_seconds,
        "cpu_seconds": used,
        "percent_of_a_core": 100 * total / args.idle_seconds,
        "streams": args.streams,
        "stream_latency_seconds": latency,
    }


# ------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"args": vars(args)}
    with cluster(tmp) as urls, ExitStack() as stack:
        admin = urls["ADMIN_DATABASE_URL"]
        app_url = urls["DATABASE_URL"]
        sides: dict[str, dict[str, Any]] = {}
        for side in SIDES:
            name = f"changelog_{side}"
            say(f"database {name}: schema.sql, log {side}, {args.products} products")
            make_database(admin, name, log=side == "on")
            load(database_url(admin, name), args.products)
            # Each service in a stack of its own: the "off" one is stopped before the idle
            # measurement.
            own = stack.enter_context(ExitStack())
            url, proc = own.enter_context(
                service(database_url(app_url, name), args.workers, tmp, name=name)
            )
            sides[side] = {
                "admin": database_url(admin, name),
                "url": url,
                "proc": proc,
                "stack": own,
            }
        numbered(sides["on"]["admin"])
        admins = [sides[side]["admin"] for side in SIDES]

        def rounds(label: str, work: Any) -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {side: [] for side in SIDES}
            for n in range(args.rounds):
                for side in SIDES if n % 2 == 0 else reversed(SIDES):
                    settle(admins)
                    say(f"{label}, log {side} (round {n + 1})")
                    out[side].append(work(side))
            return out

        if "pgbench" in args.only:
            results["pgbench_adjust_tps"] = rounds(
                "pgbench adjustments",
                lambda s: pgbench_adjust(sides[s]["admin"], 16, args.duration, args.products, tmp),
            )
        if "http" in args.only:
            for name in ("create", "adjust"):
                results[f"http_{name}_rps"] = rounds(
                    f"HTTP {name}",
                    lambda s, name=name: wrk(
                        sides[s]["url"], name, args.connections, args.duration, args.products, tmp
                    )["rps"],
                )
        if "counts" in args.only:
            results["count_seconds"] = {side: {} for side in SIDES}
            for n, size in enumerate(c for c in COUNTS if c <= args.products):
                path = tmp / f"count-{size}.csv"
                count_file(path, "BENCH-", size, offset=n)
                for side in SIDES:
                    settle(admins)
                    say(f"stock count changing {size} quantities, log {side}")
                    seconds, answer = post_file(sides[side]["url"], path, "?on_conflict=update")
                    assert answer["updated"] == size, answer
                    results["count_seconds"][side][size] = seconds
        if "million" in args.only:
            path = tmp / "new.csv"
            new_file(path, args.million)
            results["million_new_seconds"], results["million_count_seconds"] = {}, {}
            for side in ("off", "on"):
                settle(admins)
                say(f"importing {args.million} new products, log {side}")
                seconds, answer = post_file(sides[side]["url"], path)
                assert answer["created"] == args.million, answer
                results["million_new_seconds"][side] = seconds
            count_file(path, "IMP-", args.million, offset=7)
            for side in ("on", "off"):
                settle(admins)
                say(f"stock count of the {args.million} with every quantity changed, log {side}")
                seconds, answer = post_file(sides[side]["url"], path, "?on_conflict=update")
                assert answer["updated"] == args.million, answer
                results["million_count_seconds"][side] = seconds
            numbered(sides["on"]["admin"])
        if "idle" in args.only:
            # The "off" service stopped: only the cluster and the "on" service are counted.
            sides["off"]["stack"].close()
            numbered(sides["on"]["admin"])
            settle(admins)
            say(f"idle for {args.idle_seconds} s, {args.streams} streams open")
            results["idle"] = idle(sides["on"], admin, args)
            # What is not the service's own: the cluster with no service connected, and the
            # same server (uvicorn, same workers) running a bare FastAPI app.
            sides["on"]["stack"].close()
            settle(admins)
            say(f"idle for {args.idle_seconds} s: the cluster alone, a bare app on the server")
            with service(app_url, args.workers, tmp, app="bench.ceiling:app", name="bare") as (
                _,
                bare,
            ):
                results["idle"]["baseline_cpu_seconds"] = idle_cpu(
                    {"postgres": postmaster_pid(admin), "service": bare.pid}, args.idle_seconds
                )
    return results


# ------------------------------------------------------------------------------------------


ROW = "{:<44}{:>12}{:>12}{:>10}  {:<9}{}"


def table(results: dict[str, Any]) -> str:
    lines = ["the change log's cost, log on against off (issue 18's targets)", ""]
    lines.append(ROW.format("", "off", "on", "ratio", "target", ""))

    def add(label: str, off: str = "", on: str = "", ratio: str = "", goal: str = "",
            met: bool | None = None) -> None:  # fmt: skip
        verdict = "" if met is None else ("met" if met else "NOT MET")
        lines.append(ROW.format(label, off, on, ratio, goal, verdict))

    for key, label, goal in (
        ("pgbench_adjust_tps", "pgbench adjustments, tps", 0.85),
        ("http_create_rps", "HTTP POST /products, req/s", 0.95),
        ("http_adjust_rps", "HTTP adjustments, req/s", 0.95),
    ):
        if key in results:
            off = statistics.median(results[key]["off"])
            on = statistics.median(results[key]["on"])
            add(label, f"{off:.0f}", f"{on:.0f}", f"{on / off:.2f}", f">= {goal}", on / off >= goal)
    if "count_seconds" in results:
        counts = results["count_seconds"]
        sizes = sorted(counts["on"])
        for size in sizes:
            off, on = counts["off"][size], counts["on"][size]
            add(f"stock count changing {size}, s", f"{off:.1f}", f"{on:.1f}", f"{on / off:.2f}")
        # Each size is 4x the one before: linear is 4x the time, the target allows 5x.
        for small, big in itertools.pairwise(sizes):
            ratio = counts["on"][big] / counts["on"][small]
            add(f"  {big // 1000}k / {small // 1000}k with the log", ratio=f"{ratio:.2f}",
                goal="<= 5", met=ratio <= 5)  # fmt: skip
    if "million_new_seconds" in results:
        new, count = results["million_new_seconds"], results["million_count_seconds"]
        rows = results["args"]["million"]
        ratio = new["off"] / new["on"]
        add(f"import of {rows} new, s", f"{new['off']:.1f}", f"{new['on']:.1f}", f"{ratio:.2f}",
            ">= 0.8", ratio >= 0.8)  # fmt: skip
        add(f"stock count of {rows}, all changed, s", f"{count['off']:.1f}", f"{count['on']:.1f}")
        ratio = count["on"] / new["on"]
        add("  count / import as new, with the log", ratio=f"{ratio:.2f}", goal="<= 2",
            met=ratio <= 2)  # fmt: skip
    if "idle" in results:
        idle = results["idle"]
        percent = idle["percent_of_a_core"]
        add(f"idle CPU over {idle['seconds']} s, % of a core", on=f"{percent:.2f}", goal="<= 0.5",
            met=percent <= 0.5)  # fmt: skip
        # In the "off" column here: PostgreSQL with no service, uvicorn serving a bare app.
        baseline = idle.get("baseline_cpu_seconds", {})
        for name, label in (("postgres", "PostgreSQL (alone)"), ("service", "uvicorn (bare app)")):
            alone = baseline.get(name)
            add(f"  {label}", off="" if alone is None else f"{100 * alone / idle['seconds']:.2f}",
                on=f"{100 * idle['cpu_seconds'][name] / idle['seconds']:.2f}")  # fmt: skip
        latency = idle["stream_latency_seconds"]
        add(f"  then a change on {idle['streams']} streams, s",
            on="-" if latency is None else f"{latency:.2f}", goal="<= 1",
            met=latency is not None and latency <= 1)  # fmt: skip
    lines.append("")
    lines.append(
        "ratio: on/off for rates and times, off/on for the import of new products; 'off' is "
        "the same schema with the change log's triggers disabled"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=200_000, help="products for counts")
    parser.add_argument("--million", type=int, default=1_000_000, help="rows of the big import")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench/wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="pgbench/wrk runs per side")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--idle-seconds", type=int, default=30)
    parser.add_argument("--streams", type=int, default=2, help="streams open while idle")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    if not args.only <= set(PARTS):
        parser.error(f"--only takes {', '.join(PARTS)}")
    if "http" in args.only and shutil.which("wrk") is None:
        parser.error("wrk is needed (bench/run.sh changelog installs it; or apt-get install wrk)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    with tempfile.TemporaryDirectory(prefix="inventory-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)
        results = measure(args, tmp)
    print(table(results))
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"changelog-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"results in {out}")


if __name__ == "__main__":
    main()

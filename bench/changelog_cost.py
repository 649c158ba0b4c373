"""What the change log costs a write: creates and adjustments with its triggers off and on.

Starts a throwaway cluster and the service as bench.py does (uvicorn, 2 workers, the
defaults a user gets, fsync on), loads products, then measures with wrk
POST /products and POST /products/{sku}/adjustments, alternating rounds with the change
log's triggers disabled (as before the change log: no event written, no NOTIFY, nothing to
number) and enabled (an event per write, numbered by the service's sequencers). Rounds
alternate because this machine's load drifts; the table gives each side's median.

    .venv/bin/python bench/changelog_cost.py [--rows N] [--duration S] [--rounds R]
"""

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, bench/ is on the path: its bench.py brings the cluster, service and wrk.
from bench import BENCH, WRK_SCRIPTS, cluster, load, psql, say, service, wrk

WRK_SCRIPTS["adjust"] = """
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  return wrk.format("POST", "/products/bench-" .. math.random(1, ROWS) .. "/adjustments",
    {["Content-Type"] = "application/json"}, '{"delta":1,"reason":"received"}')
end
"""

TRIGGERS = (
    ("products", "product_changes_log_insert"),
    ("products", "product_changes_log_update"),
    ("products", "product_changes_log_delete"),
    ("stock_movements", "product_changes_log_movement"),
)


def set_triggers(admin_url: str, enabled: bool) -> None:
    verb = "ENABLE" if enabled else "DISABLE"
    statements = [f"ALTER TABLE {t} {verb} TRIGGER {n}" for t, n in TRIGGERS]
    psql(admin_url, "-c", "; ".join(statements))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="products loaded")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="off/on rounds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    tmp = Path(tempfile.mkdtemp(prefix="inventory-bench-"))
    tmp.chmod(0o755)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        state: {"create": [], "adjust": []} for state in ("off", "on")
    }
    try:
        with cluster(tmp) as urls:
            admin_url = urls["ADMIN_DATABASE_URL"]
            # Loaded as the release before the change log would: no 100,000 events to number
            # while the first rounds run.
            set_triggers(admin_url, False)
            say(f"loading {args.rows} products")
            load(admin_url, args.rows)
            with service(urls["DATABASE_URL"], args.workers, tmp) as (url, _):
                for n in range(args.rounds):
                    for state in ("off", "on"):
                        set_triggers(admin_url, state == "on")
                        for name in ("create", "adjust"):
                            say(f"round {n + 1}: {name}, triggers {state}")
                            result = wrk(url, name, args.connections, args.duration, args.rows, tmp)
                            runs[state][name].append(result)
                set_triggers(admin_url, True)
                events = psql(
                    admin_url,
                    "-At",
                    "-c",
                    "SELECT count(*), count(seq) FROM product_changes",
                    capture_output=True,
                ).stdout.strip()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(runs, args, events)


def report(runs: dict[str, dict[str, list[dict[str, Any]]]], args: Any, events: str) -> None:
    def median(state: str, name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[state][name])

    lines = [
        f"change log cost: {args.rounds} rounds x {args.duration} s, wrk -c {args.connections}, "
        f"{args.workers} workers, {args.rows} products",
        f"{'':<10}{'triggers':>9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'all rounds, req/s':>30}",
    ]
    for name in ("create", "adjust"):
        for state in ("off", "on"):
            each = ", ".join(f"{r['rps']:.0f}" for r in runs[state][name])
            errors = sum(r["errors"] for r in runs[state][name])
            lines.append(
                f"{name:<10}{state:>9}{median(state, name, 'rps'):>10.0f}"
                f"{median(state, name, 'p50_ms'):>9.2f}{median(state, name, 'p99_ms'):>9.2f}"
                f"{errors:>8}{each:>30}"
            )
        off, on = median("off", name, "rps"), median("on", name, "rps")
        lines.append(
            f"{name:<10}{'':>9}  on/off throughput {on / off:.2f}; "
            f"p50 +{median('on', name, 'p50_ms') - median('off', name, 'p50_ms'):.2f} ms"
        )
    total, numbered = events.split("|")
    lines.append(f"events written {total} (in the rounds with triggers on), numbered {numbered}")
    print("\n".join(lines))
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"changelog-cost-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n")
    say(f"results in {out}")


if __name__ == "__main__":
    main()

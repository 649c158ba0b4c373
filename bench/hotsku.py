"""One hot SKU: reservations against adjustments, side by side in one run (issue 21's target).

Starts a throwaway cluster and the service on its defaults (bench.bench: uvicorn, 2 workers),
creates one product with units in two locations, then for `--seconds` each, with
`--connections` concurrent clients on that one product:
  - adjustments: POST /products/{sku}/adjustments, +1 and -1 in turn (the baseline);
  - reservations: POST /reservations of 1 unit, then POST /reservations/{id}/release.
Counts requests per second (a reservation cycle is two requests), statuses, and the
deadlocks and 503s; checks the ledger and the holds after. The load generator (Python,
httpx) shares the 2 cores: compare the ratio, never the absolute numbers.
"""

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import cluster, psql, say, service  # noqa: E402

SKU = "HOT-1"


async def _drive(url: str, connections: int, seconds: float, kind: str) -> dict[str, Any]:
    statuses: collections.Counter[int] = collections.Counter()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        end = time.monotonic() + seconds

        async def adjuster(i: int) -> None:
            delta = 1 if i % 2 else -1
            while time.monotonic() < end:
                r = await client.post(
                    f"/products/{SKU}/adjustments", json={"delta": delta, "reason": "correction"}
                )
                statuses[r.status_code] += 1
                delta = -delta

        async def reserver(i: int) -> None:
            while time.monotonic() < end:
                r = await client.post(
                    "/reservations", json={"lines": [{"sku": SKU, "quantity": 1}]}
                )
                statuses[r.status_code] += 1
                if r.status_code == 201:
                    done = await client.post(f"/reservations/{r.json()['id']}/release")
                    statuses[done.status_code] += 1

        worker = adjuster if kind == "adjustments" else reserver
        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.monotonic() - started
    total = sum(statuses.values())
    return {"requests_per_second": total / elapsed, "statuses": dict(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hotsku-") as tmp_name:
        tmp = Path(tmp_name)
        with cluster(tmp) as urls, service(urls["DATABASE_URL"], 2, tmp) as (url, _):
            admin = urls["ADMIN_DATABASE_URL"]
            httpx.post(
                f"{url}/locations", json={"code": "WH-1", "name": "Warehouse"}
            ).raise_for_status()
            httpx.post(
                f"{url}/products",
                json={"sku": SKU, "name": "Hot", "price": "1.00", "quantity": 500},
            ).raise_for_status()
            httpx.post(
                f"{url}/products/{SKU}/adjustments",
                json={"delta": 500, "reason": "received", "location": "WH-1"},
            ).raise_for_status()
            results: dict[str, list[dict[str, Any]]] = {"adjustments": [], "reservations": []}
            for n in range(args.rounds):
                for kind in results:
                    say(f"round {n + 1}: {kind}, {args.connections} connections, {args.seconds} s")
                    results[kind].append(
                        asyncio.run(_drive(url, args.connections, args.seconds, kind))
                    )
            checks = psql(
                admin, "-Atc",
                "SELECT (SELECT count(*) FROM product_stock WHERE reserved > quantity), "
                "(SELECT count(*) FROM reservations WHERE status = 'active'), "
                "(SELECT reserved FROM products)",
                capture_output=True,
            ).stdout.strip()  # fmt: skip
    best = {k: max(r["requests_per_second"] for r in v) for k, v in results.items()}
    ratio = best["reservations"] / best["adjustments"]
    report = {"results": results, "best": best, "ratio": ratio, "checks": checks}
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"hotsku-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report, indent=2))
    print(f"{'one hot SKU, ' + str(args.connections) + ' connections':<40}{'req/s':>10}")
    for kind, value in best.items():
        statuses = collections.Counter[int]()
        for r in results[kind]:
            statuses.update({int(k): v for k, v in r["statuses"].items()})
        print(f"{kind:<40}{value:>10.0f}   statuses {dict(statuses)}")
    verdict = "met" if ratio >= 0.7 else "NOT MET"
    print(f"{'reservations / adjustments':<40}{ratio:>10.2f}   target >= 0.70: {verdict}")
    print(f"oversold rows, active holds, product reserved after: {checks}")


if __name__ == "__main__":
    main()

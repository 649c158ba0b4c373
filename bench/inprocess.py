"""CPU per request inside one service process, without HTTP: where a hot path's time goes.

Starts a throwaway cluster, loads products, builds the app as `app.main` does (defaults,
background loops running) and calls it as ASGI, CONCURRENCY requests at a time, with a
receive/send of our own. Prints the worker's CPU microseconds per request (PostgreSQL's
own CPU is not counted: it is another process) and, with --profile, the functions that
take it. Compare levers side by side in one run; the absolute numbers mean little.

    .venv/bin/python bench/inprocess.py [--requests 5000] [--only lookup,create,page]
"""

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.main import create_app  # noqa: E402
from bench import cluster, load  # noqa: E402  (bench/bench.py, this folder)


def scope(method: str, path: str, query: bytes = b"", body: bool = False) -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"user-agent", b"bench")]
    if body:
        headers.append((b"content-type", b"application/json"))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
    }


async def call(app: Any, request: dict[str, Any], body: bytes = b"") -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(request, receive, send)
    return status


def requests_for(name: str, rows: int, i: int) -> tuple[dict[str, Any], bytes]:
    if name == "lookup":
        return scope("GET", f"/products/bench-{i % rows + 1}"), b""
    if name == "page":
        return scope("GET", "/products", b"limit=50"), b""
    body = json.dumps(
        {"sku": f"IP-{time.monotonic_ns()}-{i}", "name": "Mug", "price": "19.99", "quantity": 3}
    ).encode()
    return scope("POST", "/products", body=True), body


async def measure(
    app: Any, state: dict[str, Any], name: str, n: int, rows: int, concurrency: int, prof: Any
) -> float:
    statuses: dict[int, int] = {}
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            request, body = requests_for(name, rows, i)
            request["state"] = state.copy()
            status = await call(app, request, body)
            statuses[status] = statuses.get(status, 0) + 1

    start = time.process_time()
    if prof:
        prof.enable()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if prof:
        prof.disable()
    cpu = time.process_time() - start
    assert set(statuses) <= {200, 201}, statuses
    return cpu / n * 1e6


async def main(args: argparse.Namespace, url: str) -> None:
    os.environ["DATABASE_URL"] = url
    app = create_app()
    lifespan_messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await lifespan_messages.get()

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()

    await lifespan_messages.put({"type": "lifespan.startup"})
    # As uvicorn does: what the lifespan yields is copied into every request's scope.
    state: dict[str, Any] = {}
    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    life = asyncio.create_task(app(lifespan, receive, send))
    await started.wait()
    names = args.only.split(",")
    for name in names:  # warm up: statements prepared, pools filled
        await measure(app, state, name, 500, args.rows, args.concurrency, None)
    results: dict[str, list[float]] = {name: [] for name in names}
    prof = cProfile.Profile() if args.profile else None
    for _ in range(args.rounds):
        for name in names:
            results[name].append(
                await measure(app, state, name, args.requests, args.rows, args.concurrency, prof)
            )
    for name, values in results.items():
        print(f"{name:8} µs CPU/request: " + ", ".join(f"{v:.0f}" for v in values), file=sys.stderr)
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(60)
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
    await lifespan_messages.put({"type": "lifespan.shutdown"})
    await life


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", default="lookup,page,create")
    parser.add_argument("--profile", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    with tempfile.TemporaryDirectory(prefix="inprocess-") as tmp, cluster(Path(tmp)) as urls:
        load(urls["ADMIN_DATABASE_URL"], arguments.rows)
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(main(arguments, urls["DATABASE_URL"]))

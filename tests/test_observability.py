"""GET /metrics, the JSON request log and X-Request-ID."""

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import Connection

from app.config import Settings
from tests.cluster import Cluster
from tests.conftest import ClientFactory
from tests.helpers import assert_problem, product
from tests.live import live_server


async def scrape(client: AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def sample(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def request_lines(out: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "app.access"]


async def test_requests_are_counted_by_route_template_and_status(client: AsyncClient) -> None:
    await client.post("/products", json=product("M-1"))
    for sku in ("M-1", "m-1", "NOPE-1", "NOPE-2"):
        await client.get(f"/products/{sku}")
    await client.get("/no/such/path")
    await client.post("/products", content=b"x" * 10, headers={"content-type": "text/plain"})

    metrics = await scrape(client)

    one = sample("inventory_http_requests_total", method="GET", route="/products/{sku}")
    assert metrics[(one[0], one[1] | {("status", "200")})] == 2
    assert metrics[(one[0], one[1] | {("status", "404")})] == 2
    created = sample("inventory_http_requests_total", method="POST", route="/products")
    assert metrics[(created[0], created[1] | {("status", "201")})] == 1
    # Refused by the body guard before routing: still under its route, not a raw path.
    assert metrics[(created[0], created[1] | {("status", "415")})] == 1
    unmatched = sample("inventory_http_requests_total", method="GET", route="<unmatched>")
    assert metrics[(unmatched[0], unmatched[1] | {("status", "404")})] == 1
    assert not any("NOPE" in str(labels) or "M-1" in str(labels) for _, labels in metrics)
    latency = sample(
        "inventory_http_request_duration_seconds_count",
        method="GET",
        route="/products/{sku}",
        status="404",
    )
    assert metrics[latency] == 2
    buckets = [k for k in metrics if k[0] == "inventory_http_request_duration_seconds_bucket"]
    assert len(buckets) > 10


async def test_pool_gauges_show_size_available_and_waiting(
    client: AsyncClient, db: Connection[Any], settings: Settings
) -> None:
    await client.post("/products", json=product("HELD-1"))
    for _ in range(100):  # a returned connection is back in the pool soon (bounded: 2 s)
        idle = await scrape(client)
        if idle[sample("inventory_db_pool_available")] == settings.pool_size:
            break
        await asyncio.sleep(0.02)
    assert idle[sample("inventory_db_pool_size")] == settings.pool_size
    assert idle[sample("inventory_db_pool_max")] == settings.pool_size
    assert idle[sample("inventory_db_pool_available")] == settings.pool_size
    assert idle[sample("inventory_db_pool_waiting")] == 0

    # Every connection stuck behind a lock, and two more requests queued for one (pages:
    # lookups made together would share one connection, app.products.queries.Lookups).
    db.autocommit = False
    db.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
    try:
        held = [
            asyncio.create_task(client.get("/products?limit=1"))
            for _ in range(settings.pool_size + 2)
        ]
        for _ in range(250):  # until the requests are in (bounded: 5 s)
            busy = await scrape(client)
            if busy[sample("inventory_db_pool_waiting")] == 2:
                break
            await asyncio.sleep(0.02)
    finally:
        db.rollback()
        db.autocommit = True

    assert busy[sample("inventory_db_pool_available")] == 0
    assert busy[sample("inventory_db_pool_waiting")] == 2
    assert {r.status_code for r in await asyncio.gather(*held)} == {200}


async def test_database_errors_are_counted_by_sqlstate_class(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute("REVOKE SELECT ON products FROM inventory_rw")  # 42501 on the next lookup

    assert_problem(await client.get("/products/ABC-1"), 500, "internal_error")
    assert_problem(await client.get("/products/ABC-1"), 500, "internal_error")

    metrics = await scrape(client)
    assert metrics[sample("inventory_db_errors_total", sqlstate_class="42")] == 2


async def test_request_id_is_generated_and_echoed(client: AsyncClient) -> None:
    first = await client.get("/healthz")
    second = await client.get("/products/NOPE-1")

    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[0] != ids[1]


@pytest.mark.parametrize("given", ["abc-123", "x" * 128, "trace=1; span=2 (retry)"])
async def test_valid_request_id_is_kept(client: AsyncClient, given: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": given})

    assert response.headers["x-request-id"] == given


@pytest.mark.parametrize("given", ["", "x" * 129, "tab\there", "caf\u00e9"])
async def test_invalid_request_id_is_replaced(client: AsyncClient, given: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": given.encode()})

    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_one_json_log_line_per_request(
    client: AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    await client.get("/products/NOPE-1", headers={"X-Request-ID": "req-42"})
    await client.post("/products", json=product("L-1"))

    lines = request_lines(capsys.readouterr().out)

    assert len(lines) == 2
    lookup = lines[0]
    assert lookup["method"] == "GET"
    assert lookup["route"] == "/products/{sku}"
    assert lookup["status"] == 404
    assert lookup["request_id"] == "req-42"
    assert isinstance(lookup["duration_ms"], float) and 0 <= lookup["duration_ms"] < 10_000
    assert lookup["level"] == "INFO" and lookup["ts"].endswith("+00:00")
    assert (lines[1]["method"], lines[1]["route"], lines[1]["status"]) == ("POST", "/products", 201)


async def test_a_500_carries_the_request_id_and_its_log_line_names_it(
    client: AsyncClient, db: Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    db.execute("REVOKE SELECT ON products FROM inventory_rw")

    response = await client.get("/products/ABC-1", headers={"X-Request-ID": "boom-1"})

    assert_problem(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "boom-1"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [getattr(r, "request_id", None) for r in errors] == ["boom-1"]


async def test_database_password_is_never_logged(
    settings: Settings,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A database that refuses the password, then one that is not there at all.
    caplog.set_level(logging.DEBUG)
    assert settings.database_url
    secret = "Sup3r-Secret-pw"
    wrong = re.sub(r"//([^:]+):[^@]*@", rf"//\1:{secret}@", settings.database_url)
    nowhere = f"postgresql://inventory_app:{secret}@127.0.0.1:9/inventory"
    for url in (wrong, nowhere):
        async with make_client(database_url=url, pool_timeout=0.5, pool_size=1) as c:
            assert_problem(await c.get("/products/X-1"), 503, "database_unavailable")

    logged = "\n".join(r.getMessage() for r in caplog.records) + capsys.readouterr().out
    assert "database not reachable" in logged
    assert secret not in logged


@pytest.mark.slow
def test_metrics_of_several_workers_are_summed(
    postgresql: Connection[Any], pg_server: Cluster, tmp_path: Path
) -> None:
    # What run.sh and the Dockerfile do: two uvicorn workers, one multiprocess directory.
    env = {
        "DATABASE_URL": pg_server.app_dsn(postgresql.info.dbname),
        "INVENTORY_POOL_SIZE": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    with live_server(env, "--workers", "2") as server:
        # A new connection per request, until both workers have answered some (each keeps
        # its counts in files named by its pid); bounded at 500 requests.
        sent = 0
        while len({p.stem.rsplit("_", 1)[-1] for p in tmp_path.glob("counter_*.db")}) < 2:
            assert sent < 500, "one worker took every connection"
            response = httpx.get(f"{server.url}/products/NOPE-1", headers={"Connection": "close"})
            assert response.status_code == 404
            sent += 1
        key = sample(
            "inventory_http_requests_total", method="GET", route="/products/{sku}", status="404"
        )
        for _ in range(10):
            scraped = httpx.get(f"{server.url}/metrics", headers={"Connection": "close"}).text
            families = {
                (s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(scraped)
                for s in f.samples
            }
            # Whichever worker answers the scrape reports the requests of both.
            assert families[key] == sent
        server.terminate_and_wait(timeout=20)

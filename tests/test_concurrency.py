"""Claims about concurrency, each proven with concurrent requests against real PostgreSQL."""

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from httpx import AsyncClient
from psycopg import Connection

from app.config import Settings
from tests.cluster import Cluster
from tests.conftest import ClientFactory
from tests.helpers import SLEEPING, assert_problem, product


@pytest.mark.parametrize("round_", range(3))
async def test_concurrent_creates_of_one_sku_in_mixed_case_yield_exactly_one(
    client: AsyncClient, db: Connection[Any], round_: int
) -> None:
    skus = ["race-sku" if i % 2 else "RACE-SKU" for i in range(50)]
    skus[7] = "Race-Sku"

    responses = await asyncio.gather(*(client.post("/products", json=product(s)) for s in skus))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: 49}
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409, "duplicate_sku")
    assert db.execute("SELECT count(*) FROM products").fetchone() == (1,)


async def test_a_slow_query_does_not_hold_up_other_requests(
    client: AsyncClient, db: Connection[Any]
) -> None:
    # In this test's database only: inserting SLOW-1 takes two seconds inside PostgreSQL.
    db.execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.sku = 'SLOW-1' THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER slow BEFORE INSERT ON products FOR EACH ROW EXECUTE FUNCTION slow()"
    )
    await client.post("/products", json=product("FAST-1"))
    started = time.monotonic()
    slow = asyncio.create_task(client.post("/products", json=product("SLOW-1")))
    for _ in range(500):  # until the slow insert is inside pg_sleep (bounded: 5 s)
        if db.execute(SLEEPING).fetchone() == (1,):
            break
        await asyncio.sleep(0.01)

    timings = []
    for request in (
        client.get("/healthz"),
        client.get("/products/fast-1"),
        client.post("/products", json=product("FAST-2")),
        client.get("/products"),
    ):
        t0 = time.monotonic()
        response = await request
        timings.append(time.monotonic() - t0)
        assert response.status_code in (200, 201)

    assert not slow.done()
    assert max(timings) < 0.5, timings
    assert (await slow).status_code == 201
    assert time.monotonic() - started >= 2


async def test_pool_exhausted_past_its_timeout_is_503_with_retry_after(
    client: AsyncClient, db: Connection[Any], settings: Settings
) -> None:
    await client.post("/products", json=product("HELD-1"))
    # Hold every pooled connection: pages queue behind an exclusive table lock (one
    # connection each; lookups would share one, app.products.queries.Lookups).
    db.autocommit = False
    db.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
    try:
        holders = [
            asyncio.create_task(client.get("/products?limit=1")) for _ in range(settings.pool_size)
        ]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        response = await client.get("/products/HELD-1")
        waited = time.monotonic() - started
    finally:
        db.rollback()
        db.autocommit = True

    body = assert_problem(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "1"
    assert "detail" in body
    assert settings.pool_timeout - 0.2 <= waited < settings.pool_timeout + 1
    assert [h.status_code for h in await asyncio.gather(*holders)] == [200] * settings.pool_size


@pytest.mark.slow
@pytest.mark.alone
async def test_database_outage_is_503_then_recovers_without_restart(
    own_cluster: Cluster, make_client: ClientFactory
) -> None:
    timeout = 1.5
    async with make_client(
        database_url=own_cluster.app_dsn("inventory"), pool_size=3, pool_timeout=timeout
    ) as client:
        assert (await client.post("/products", json=product("KEEP-1"))).status_code == 201

        await asyncio.to_thread(own_cluster.stop)
        for path in ("/products/KEEP-1", "/readyz"):
            started = time.monotonic()
            response = await client.get(path)
            assert time.monotonic() - started < timeout + 1
            assert_problem(response, 503, "database_unavailable")
            assert response.headers["retry-after"]

        await asyncio.to_thread(own_cluster.start)
        back = time.monotonic()
        while True:
            response = await client.get("/products/KEEP-1")
            if response.status_code == 200 or time.monotonic() - back > 10:
                break
            await asyncio.sleep(0.2)
        assert response.status_code == 200, response.text
        assert response.json()["sku"] == "KEEP-1"
        assert (await client.get("/readyz")).status_code == 200

"""app/core/coalescing.py, and the product lookups and creates built on it
(app.products.queries.Lookups, Creates)."""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest
from httpx import AsyncClient
from psycopg import Connection

from app.core.coalescing import Coalescer
from tests.conftest import ClientFactory
from tests.helpers import product


class Recorder:
    """A fetch that records its batches, answering `key * 2` (None for negative keys)."""

    def __init__(self, *, fail: Exception | None = None, gate: asyncio.Event | None = None):
        self.batches: list[list[int]] = []
        self.fail = fail
        self.gate = gate

    async def __call__(self, keys: Sequence[int]) -> list[int | None]:
        self.batches.append(list(keys))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [None if k < 0 else k * 2 for k in keys]


async def test_the_calls_of_one_turn_are_one_fetch_and_each_gets_its_own_answer() -> None:
    fetch = Recorder()
    coalescer = Coalescer[int, int](fetch)
    answers = await asyncio.gather(*(coalescer.get(k) for k in [1, 2, -3, 2, 5]))
    assert answers == [2, 4, None, 4, 10]
    assert fetch.batches == [[1, 2, -3, 2, 5]]


async def test_a_lone_call_is_sent_at_once_and_later_calls_make_new_batches() -> None:
    fetch = Recorder()
    coalescer = Coalescer[int, int](fetch)
    assert await coalescer.get(7) == 14
    assert await coalescer.get(8) == 16
    assert fetch.batches == [[7], [8]]


async def test_a_batch_larger_than_the_maximum_runs_as_several_fetches() -> None:
    fetch = Recorder()
    coalescer = Coalescer[int, int](fetch, batch_max=2)
    assert await asyncio.gather(*(coalescer.get(k) for k in range(5))) == [0, 2, 4, 6, 8]
    assert fetch.batches == [[0, 1], [2, 3], [4]]


async def test_a_failed_fetch_fails_every_caller_of_its_batch_and_no_later_one() -> None:
    fetch = Recorder(fail=RuntimeError("database gone"))
    coalescer = Coalescer[int, int](fetch)
    results = await asyncio.gather(*(coalescer.get(k) for k in (1, 2)), return_exceptions=True)
    assert [str(r) for r in results] == ["database gone", "database gone"]
    fetch.fail = None
    assert await coalescer.get(3) == 6


async def test_a_cancelled_caller_cancels_nobody_else() -> None:
    gate = asyncio.Event()
    fetch = Recorder(gate=gate)
    coalescer = Coalescer[int, int](fetch)
    leaving = asyncio.create_task(coalescer.get(1))
    staying = asyncio.create_task(coalescer.get(1))
    await asyncio.sleep(0.01)  # both are in the fetch's batch, which waits
    leaving.cancel()
    gate.set()
    assert await staying == 2
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert fetch.batches == [[1, 1]]


async def test_concurrent_lookups_each_get_their_own_product(wide_client: AsyncClient) -> None:
    client = wide_client
    for i in range(20):
        assert (
            await client.post("/products", json=product(f"CO-{i}", quantity=i))
        ).status_code == 201
    # Existing, in other letter cases, asked twice at once, and missing, all side by side.
    asked = [f"CO-{i}" for i in range(20)] + [f"co-{i}" for i in range(0, 20, 3)]
    asked += ["CO-4", "MISSING-1", "missing-2"]
    responses = await asyncio.gather(*(client.get(f"/products/{sku}") for sku in asked * 3))
    for sku, response in zip(asked * 3, responses, strict=True):
        if sku.lower().startswith("missing"):
            assert response.status_code == 404, response.text
            continue
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["sku"] == sku.upper()
        assert body["quantity"] == int(sku.split("-")[1])
        assert response.headers["etag"] == (await client.get(f"/products/{sku}")).headers["etag"]


async def test_concurrent_creates_answer_as_if_made_one_by_one(
    wide_client: AsyncClient, db: Connection[Any]
) -> None:
    client = wide_client
    # A rule only the database knows: a batch holding a product it refuses fails whole.
    db.execute("ALTER TABLE products ADD CONSTRAINT products_test_refused CHECK (name <> 'No')")
    assert (await client.post("/products", json=product("OLD-1"))).status_code == 201
    refused_alone = await client.post("/products", json=product("NO-0", name="No"))
    bodies = [product(f"NC-{i}", quantity=i) for i in range(12)]
    bodies += [product("NC-3"), product("nc-4"), product("NC-0", name="Second")]
    bodies += [product("NO-1", name="No"), product("OLD-1"), product("old-1")]
    responses = await asyncio.gather(*(client.post("/products", json=b) for b in bodies))

    by_sku: dict[str, list[int]] = {}
    for body, response in zip(bodies, responses, strict=True):
        by_sku.setdefault(body["sku"].lower(), []).append(response.status_code)
        if response.status_code == 201:
            assert response.json()["sku"] == body["sku"]
            assert response.json()["quantity"] == body.get("quantity", 0)
    for sku, statuses in by_sku.items():
        if sku == "no-1":
            assert statuses == [refused_alone.status_code], refused_alone.text
        elif sku == "old-1":
            assert statuses == [409, 409]
        else:
            assert sorted(statuses) == [201] + [409] * (len(statuses) - 1), sku
    rows = db.execute(
        "SELECT lower(sku), count(*), count(DISTINCT created_at) FROM products GROUP BY 1"
    ).fetchall()
    assert {sku: n for sku, n, _ in rows} == {s: 1 for s in by_sku if s != "no-1"} | {"old-1": 1}
    # Without a refused product, the batch is written by one statement: its products
    # share its transaction's time.
    clean = [product(f"TOGETHER-{i}") for i in range(10)]
    responses = await asyncio.gather(*(client.post("/products", json=b) for b in clean))
    assert [r.status_code for r in responses] == [201] * 10
    (times,) = db.execute(
        "SELECT count(DISTINCT created_at) FROM products WHERE sku LIKE 'TOGETHER-%'"
    ).fetchone() or (0,)
    assert times < 10


async def test_two_services_creating_the_same_skus_at_once_never_deadlock(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Each service's batch comes in the opposite order; written in that order, each would
    # hold the SKU the other waits for (40P01, retried by the write runner and logged).
    caplog.set_level(logging.INFO, logger="app.database")
    async with (
        make_client(pool_size=4, pool_timeout=30.0) as one,
        make_client(pool_size=4, pool_timeout=30.0) as two,
    ):
        for round_ in range(15):
            skus = [f"R{round_}-{i}" for i in range(8)]
            responses = await asyncio.gather(
                *(one.post("/products", json=product(sku)) for sku in skus),
                *(two.post("/products", json=product(sku)) for sku in reversed(skus)),
            )
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [201] * 8 + [409] * 8, statuses
    assert "40P01" not in caplog.text

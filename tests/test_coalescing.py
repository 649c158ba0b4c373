"""app/core/coalescing.py, and the product lookups built on it (app.products.queries.Lookups)."""

import asyncio
from collections.abc import Sequence

import pytest
from httpx import AsyncClient

from app.core.coalescing import Coalescer
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

"""Stock and If-Match under real concurrency: many requests at once in PostgreSQL."""

import asyncio
import random
import time
from collections import Counter
from typing import Any

import pytest
from httpx import AsyncClient
from psycopg import Connection

from tests.helpers import assert_problem, product
from tests.stock_helpers import (
    Overlap,
    adjust,
    assert_ledger_consistent,
    widen_race,
)

ROUNDS = 3

# Every sequence of requests in this module leaves consistent ledgers (checked after each test).
pytestmark = pytest.mark.usefixtures("ledgers_consistent")


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_sixty_concurrent_removals_of_one_from_twenty_sell_exactly_twenty(
    wide_client: AsyncClient, db: Connection[Any], overlap: Overlap, round_: int
) -> None:
    await wide_client.post("/products", json=product("RACE-1", quantity=20))
    widen_race(db)

    started = time.monotonic()
    with overlap:
        responses = await asyncio.gather(
            *(adjust(wide_client, "race-1", -1, "sold") for _ in range(60))
        )
    elapsed = time.monotonic() - started

    assert Counter(r.status_code for r in responses) == {200: 20, 409: 40}
    for r in responses:
        if r.status_code == 409:
            body = assert_problem(r, 409, "insufficient_stock")
            assert body["available"] == 0
    # Each success left a different quantity behind: 19, 18, ..., 0, once each.
    assert sorted(r.json()["quantity"] for r in responses if r.status_code == 200) == list(
        range(20)
    )
    assert (await wide_client.get("/products/RACE-1")).json()["quantity"] == 0
    assert assert_ledger_consistent(db, "RACE-1", initial=20) == [-1] * 20
    # The requests met in the database: several statements ran at once and waited on locks.
    assert overlap.most_active >= 5, overlap.most_active
    assert overlap.lock_waits > 0
    print(
        f"\n60 x -1 on 20 (round {round_}): 20x200 40x409 in {elapsed:.2f}s, "
        f"up to {overlap.most_active} statements at once"
    )


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_concurrent_additions_and_removals_end_at_the_arithmetic_sum(
    wide_client: AsyncClient, db: Connection[Any], overlap: Overlap, round_: int
) -> None:
    await wide_client.post("/products", json=product("MIX-1", quantity=50))
    widen_race(db, 0.005)
    deltas = [3] * 25 + [-2] * 25 + [7] * 5 + [-5] * 5
    random.Random(round_).shuffle(deltas)

    started = time.monotonic()
    with overlap:
        responses = await asyncio.gather(*(adjust(wide_client, "MIX-1", d) for d in deltas))
    elapsed = time.monotonic() - started

    # 50 in stock covers every removal even if they all came first: all must succeed.
    assert [r.status_code for r in responses] == [200] * len(deltas)
    expected = 50 + sum(deltas)
    assert expected == 50 + 75 - 50 + 35 - 25
    assert (await wide_client.get("/products/MIX-1")).json()["quantity"] == expected
    assert sorted(assert_ledger_consistent(db, "MIX-1", initial=50)) == sorted(deltas)
    assert overlap.most_active >= 5, overlap.most_active
    print(f"\n60 mixed +/- on 50 (round {round_}): 60x200, 50 -> {expected} in {elapsed:.2f}s")


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_concurrent_additions_and_removals_near_zero_never_go_negative(
    wide_client: AsyncClient, db: Connection[Any], round_: int
) -> None:
    await wide_client.post("/products", json=product("EDGE-1", quantity=2))
    deltas = [-1] * 30 + [1] * 30
    random.Random(round_).shuffle(deltas)

    responses = await asyncio.gather(*(adjust(wide_client, "EDGE-1", d) for d in deltas))

    applied = [d for d, r in zip(deltas, responses, strict=True) if r.status_code == 200]
    refused = [d for d, r in zip(deltas, responses, strict=True) if r.status_code != 200]
    assert all(d == -1 for d in refused)
    for r in responses:
        if r.status_code != 200:
            assert_problem(r, 409, "insufficient_stock")
    quantity = (await wide_client.get("/products/EDGE-1")).json()["quantity"]
    assert quantity == 2 + sum(applied) >= 0
    assert sorted(assert_ledger_consistent(db, "EDGE-1", initial=2)) == sorted(applied)


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_concurrent_patches_with_one_if_match_let_exactly_one_through(
    wide_client: AsyncClient, db: Connection[Any], overlap: Overlap, round_: int
) -> None:
    created = await wide_client.post("/products", json=product("PATCH-1"))
    etag = created.headers["etag"]
    # Only the winner writes; the rest queue behind its row lock for as long as it sleeps.
    widen_race(db, 0.2)

    started = time.monotonic()
    with overlap:
        responses = await asyncio.gather(
            *(
                wide_client.patch(
                    "/products/PATCH-1", json={"name": f"Name {i}"}, headers={"If-Match": etag}
                )
                for i in range(20)
            )
        )

    elapsed = time.monotonic() - started
    assert Counter(r.status_code for r in responses) == {200: 1, 412: 19}
    print(f"\n20 PATCH same If-Match (round {round_}): 1x200 19x412 in {elapsed:.2f}s")
    (winner,) = [r for r in responses if r.status_code == 200]
    for r in responses:
        if r.status_code == 412:
            assert_problem(r, 412, "precondition_failed")
    current = await wide_client.get("/products/PATCH-1")
    assert current.json()["name"] == winner.json()["name"]
    assert current.headers["etag"] == winner.headers["etag"] != etag
    assert overlap.most_active >= 5, overlap.most_active


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_concurrent_deletes_with_one_if_match_delete_once(
    wide_client: AsyncClient, round_: int
) -> None:
    etag = (await wide_client.post("/products", json=product("DEL-1"))).headers["etag"]

    responses = await asyncio.gather(
        *(wide_client.delete("/products/del-1", headers={"If-Match": etag}) for _ in range(10))
    )

    # One deletes; the others find no product (404: the precondition is moot without one).
    assert Counter(r.status_code for r in responses) == {204: 1, 404: 9}

"""GET /changes: every change from any client, each seen once by a client following `after`."""

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

import psycopg
import pytest
from httpx import AsyncClient
from psycopg import Connection
from pydantic import SecretStr

from tests.cluster import Cluster
from tests.conftest import ClientFactory
from tests.helpers import RFC3339_UTC, age_changes, assert_problem, product

# The change log is numbered by its sequencer, a background loop.
pytestmark = pytest.mark.background

EVENT_FIELDS = {"seq", "type", "sku", "product", "changed", "movement", "at"}


async def changes(client: AsyncClient, count: int, after: int | None = None) -> list[Any]:
    """The first `count` events after `after`, waiting for them (bounded: 5 s): the app
    numbers committed events a moment after their commit."""
    params = {"limit": 1000} if after is None else {"limit": 1000, "after": after}
    for _ in range(250):
        response = await client.get("/changes", params=params)
        assert response.status_code == 200, response.text
        got: list[Any] = response.json()
        if len(got) >= count:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(got)} events, not {count}: {got}")


async def test_every_api_change_is_one_event_with_the_state_after_it(client: AsyncClient) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))
    await client.patch("/products/abc-1", json={"name": "Red mug", "description": "d"})
    await client.post("/products/ABC-1/adjustments", json={"delta": -2, "reason": "sold"})
    await client.delete("/products/ABC-1")

    created, patched, adjusted, deleted = await changes(client, 4)

    assert set(created) == EVENT_FIELDS
    assert [e["seq"] for e in (created, patched, adjusted, deleted)] == ["1", "2", "3", "4"]
    assert [e["type"] for e in (created, patched, adjusted, deleted)] == [
        "product.created", "product.updated", "product.updated", "product.deleted",
    ]  # fmt: skip
    assert {e["sku"] for e in (created, patched, adjusted, deleted)} == {"ABC-1"}
    assert created["product"]["quantity"] == 5 and created["changed"] == []
    assert patched["changed"] == ["name", "description", "updated_at"]
    assert patched["product"]["name"] == "Red mug" and patched["movement"] is None
    assert adjusted["changed"] == ["quantity", "available", "updated_at"]
    assert adjusted["product"]["quantity"] == 3
    assert adjusted["movement"]["delta"] == -2 and adjusted["movement"]["reason"] == "sold"
    assert adjusted["movement"]["quantity_after"] == 3
    assert deleted["product"] == adjusted["product"] and deleted["changed"] == []
    assert all(RFC3339_UTC.match(e["at"]) for e in (created, patched, adjusted, deleted))


async def test_the_movement_in_an_event_is_the_ledger_row_as_movements_shows_it(
    client: AsyncClient,
) -> None:
    await client.post("/products", json=product("ABC-1"))
    await client.post(
        "/products/ABC-1/adjustments", json={"delta": 4, "reason": "received", "note": "box"}
    )

    adjusted = (await changes(client, 2))[1]

    assert [adjusted["movement"]] == (await client.get("/products/ABC-1/movements")).json()


async def test_an_import_logs_one_event_per_row(client: AsyncClient) -> None:
    body = "sku,name,price,quantity\nIMP-1,One,1,1\nIMP-2,Two,2,2\nIMP-3,Three,3,3\n"
    response = await client.post(
        "/products/import", content=body, headers={"content-type": "text/csv"}
    )
    assert response.status_code == 201, response.text

    logged = await changes(client, 3)

    assert [(e["type"], e["sku"], e["product"]["quantity"]) for e in logged] == [
        ("product.created", "IMP-1", 1),
        ("product.created", "IMP-2", 2),
        ("product.created", "IMP-3", 3),
    ]


async def test_psql_inserts_updates_and_deletes_are_served_like_api_changes(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('SQL-1', 'From psql', 2.5)")
    db.execute("UPDATE products SET price = 3 WHERE sku = 'SQL-1'")
    db.execute("DELETE FROM products WHERE sku = 'SQL-1'")

    logged = await changes(client, 3)

    assert [(e["type"], e["changed"]) for e in logged] == [
        ("product.created", []),
        ("product.updated", ["price", "updated_at"]),
        ("product.deleted", []),
    ]
    assert logged[1]["product"]["price"] == "3.00"


async def test_pages_follow_link_and_start_at_the_oldest_event_kept(client: AsyncClient) -> None:
    for i in range(5):
        await client.post("/products", json=product(f"P-{i}"))
    await changes(client, 5)

    seen, url = [], "/changes?limit=2"
    while url:
        response = await client.get(url)
        seen += [e["sku"] for e in response.json()]
        link = response.headers.get("link")
        url = link[1 : link.index(">")] if link else ""

    assert seen == [f"P-{i}" for i in range(5)]
    assert (await client.get("/changes?after=5")).json() == []


async def test_a_cursor_older_than_the_retention_is_410(
    client: AsyncClient, db: Connection[Any]
) -> None:
    for i in range(3):
        await client.post("/products", json=product(f"P-{i}"))
    await changes(client, 3)
    age_changes(db, 31, through_seq=2)
    assert db.execute("SELECT product_changes_purge(30)").fetchone() == (2,)

    expired = await client.get("/changes?after=1")
    oldest = await client.get("/changes")

    body = assert_problem(expired, 410, "cursor_expired")
    assert body["oldest_after"] == "2"
    assert [e["seq"] for e in oldest.json()] == ["3"]
    assert (await client.get("/changes?after=2")).json() == oldest.json()


async def test_the_service_purges_events_past_the_retention_by_itself(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    async with make_client(changes_purge_interval_seconds=0.1) as client:
        for i in range(3):
            await client.post("/products", json=product(f"P-{i}"))
        await changes(client, 3)
        age_changes(db, 31)
        for _ in range(250):
            if (await client.get("/changes")).json() == []:
                break
            await asyncio.sleep(0.02)
        expired = await client.get("/changes?after=0")

    assert_problem(expired, 410, "cursor_expired")
    assert db.execute("SELECT through FROM product_changes_purged").fetchone() == (3,)


@pytest.mark.parametrize("query", ["after=abc", "after=-1", "limit=0", "limit=1001", "limt=5"])
async def test_bad_paging_parameters_are_422(client: AsyncClient, query: str) -> None:
    assert_problem(await client.get(f"/changes?{query}"), 422, "validation_failed")


async def test_read_tokens_may_read_the_log(make_client: ClientFactory) -> None:
    async with make_client(
        api_tokens=SecretStr("writer"), read_tokens=SecretStr("reader")
    ) as client:
        anonymous = await client.get("/changes")
        reader = await client.get("/changes", headers={"Authorization": "Bearer reader"})

    assert_problem(anonymous, 401, "unauthorized")
    assert reader.status_code == 200


async def test_a_rolled_back_change_never_appears(
    client: AsyncClient, postgresql: Connection[Any], pg_server: Cluster
) -> None:
    with psycopg.connect(pg_server.admin_dsn(postgresql.info.dbname)) as tx:
        tx.execute("INSERT INTO products (sku, name, price) VALUES ('GONE-1', 'n', 1)")
        tx.rollback()
    await client.post("/products", json=product("KEPT-1"))

    logged = await changes(client, 1)
    await asyncio.sleep(0.3)  # time enough for anything else to be numbered

    assert [e["sku"] for e in logged] == ["KEPT-1"]
    assert [e["sku"] for e in (await client.get("/changes")).json()] == ["KEPT-1"]


async def test_a_transaction_that_commits_late_comes_after_what_was_served(
    client: AsyncClient, postgresql: Connection[Any], pg_server: Cluster
) -> None:
    with psycopg.connect(pg_server.admin_dsn(postgresql.info.dbname)) as late:
        late.execute("INSERT INTO products (sku, name, price) VALUES ('LATE-1', 'n', 1)")
        await client.post("/products", json=product("EARLY-1"))
        served = await changes(client, 1)
        assert [e["sku"] for e in served] == ["EARLY-1"]
        late.commit()

    after_cursor = await changes(client, 1, after=int(served[-1]["seq"]))

    assert [e["sku"] for e in after_cursor] == ["LATE-1"]
    assert [e["sku"] for e in (await client.get("/changes")).json()] == ["EARLY-1", "LATE-1"]


@pytest.mark.slow
async def test_concurrent_writers_each_change_is_seen_once_and_per_product_in_order(
    wide_client: AsyncClient, postgresql: Connection[Any], pg_server: Cluster
) -> None:
    """8 writers x 200 changes over HTTP on 6 shared products, while a reader follows the
    cursor 7 events at a time; some changes come from psql transactions that commit late."""
    client = wide_client
    writers, changes_each, skus = 8, 200, [f"P-{i}" for i in range(6)]
    for sku in skus:
        assert (await client.post("/products", json=product(sku))).status_code == 201
    created = len(skus)
    dsn = pg_server.admin_dsn(postgresql.info.dbname)
    done = asyncio.Event()

    async def write(seed: int) -> None:
        rng = random.Random(seed)
        for n in range(changes_each):
            sku = rng.choice(skus)
            if n % 25 == 0:
                # A psql transaction that holds its change while others commit and are read.
                def late_adjustment(sku: str = sku) -> None:
                    with psycopg.connect(dsn) as conn:
                        conn.execute("SELECT adjust_stock(%s, 1, 'received')", (sku,))
                        time.sleep(0.05)

                await asyncio.to_thread(late_adjustment)
            else:
                response = await client.post(
                    f"/products/{sku}/adjustments", json={"delta": 1, "reason": "received"}
                )
                assert response.status_code == 200, response.text

    seen: list[dict[str, Any]] = []

    async def read() -> None:
        cursor = created
        idle = 0
        while idle < 50:  # after the writers: 1 s without anything new
            response = await client.get("/changes", params={"after": cursor, "limit": 7})
            page = response.json()
            seen.extend(page)
            if page:
                cursor = int(page[-1]["seq"])
                idle = 0
            elif done.is_set():
                idle += 1
                await asyncio.sleep(0.02)
            else:
                await asyncio.sleep(0.005)

    began = time.monotonic()
    reader = asyncio.create_task(read())
    await asyncio.gather(*(write(i) for i in range(writers)))
    done.set()
    await reader
    elapsed = time.monotonic() - began

    total = writers * changes_each
    seqs = [int(e["seq"]) for e in seen]
    duplicates = len(seqs) - len(set(seqs))
    assert duplicates == 0
    assert seqs == list(range(created + 1, created + total + 1))  # none lost, in order
    quantities: dict[str, list[int]] = defaultdict(list)
    for event in seen:
        assert event["movement"]["quantity_after"] == event["product"]["quantity"]
        quantities[event["sku"]].append(event["product"]["quantity"])
    for sku, observed in quantities.items():
        assert observed == list(range(1, len(observed) + 1)), sku  # per product, in order
    stored = await client.get("/products")
    assert sum(p["quantity"] for p in stored.json()) == total
    print(
        f"\nexactly once: {writers} writers, {len(seen)} events, {duplicates} duplicates, "
        f"{total - len(set(seqs))} lost, {elapsed:.1f} s"
    )

"""Two service processes (real uvicorns) on one database, both behind one real PgBouncer in
transaction pooling mode: every guarantee holds across them."""

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from psycopg import Connection

from tests.cluster import Cluster, bouncer, via
from tests.helpers import product
from tests.live import live_server
from tests.sse import events
from tests.stock_helpers import assert_ledger_consistent, widen_race
from tests.test_webhooks import start_receiver

pytestmark = [pytest.mark.slow, pytest.mark.alone]


@pytest.fixture
def instances(postgresql: Connection[Any], pg_server: Cluster) -> Iterator[tuple[str, str]]:
    """The base URLs of two uvicorn processes serving this test's database through PgBouncer
    (4 server connections for both: their transactions share and swap them)."""
    direct = pg_server.app_dsn(postgresql.info.dbname)
    with bouncer(pg_server, pool_size=4) as address, ExitStack() as stack:
        env = {
            "DATABASE_URL": via(direct, address),
            "INVENTORY_PGBOUNCER": "1",
            "INVENTORY_LISTEN_DATABASE_URL": direct,
            "INVENTORY_POOL_SIZE": "6",
            "INVENTORY_POOL_TIMEOUT": "10",
            "INVENTORY_WEBHOOK_ALLOW_PRIVATE": "1",
            "INVENTORY_WEBHOOK_RETRY_SECONDS": "0.1",
            "INVENTORY_WEBHOOK_CONCURRENCY": "1",
            "INVENTORY_LOG_LEVEL": "WARNING",
        }
        a = stack.enter_context(live_server(env))
        b = stack.enter_context(live_server(env))
        yield a.url, b.url


async def test_sixty_removals_spread_over_both_sell_exactly_twenty(
    instances: tuple[str, str], db: Connection[Any]
) -> None:
    a, b = instances
    async with httpx.AsyncClient(base_url=a) as ca, httpx.AsyncClient(base_url=b) as cb:
        assert (await ca.post("/products", json=product("RACE-1", quantity=20))).status_code == 201
        db.autocommit = True
        widen_race(db)
        body = {"delta": -1, "reason": "sold"}
        answers = await asyncio.gather(
            *(
                (ca if n % 2 else cb).post("/products/race-1/adjustments", json=body)
                for n in range(60)
            )
        )
        assert Counter(r.status_code for r in answers) == {200: 20, 409: 40}
        # Both processes sold some.
        by_instance = Counter(str(r.url.port) for r in answers if r.status_code == 200)
        assert len(by_instance) == 2, by_instance
        assert (await cb.get("/products/RACE-1")).json()["quantity"] == 0
    assert assert_ledger_consistent(db, "RACE-1", initial=20) == [-1] * 20


async def test_one_idempotency_key_sent_to_both_at_once_has_one_effect(
    instances: tuple[str, str], db: Connection[Any]
) -> None:
    a, b = instances
    async with httpx.AsyncClient(base_url=a) as ca, httpx.AsyncClient(base_url=b) as cb:
        await ca.post("/products", json=product("KEY-1", quantity=0))
        db.autocommit = True
        widen_race(db, seconds=0.3)  # the first one is still running when the second arrives
        headers = {"Idempotency-Key": "both-at-once"}
        body = {"delta": 5, "reason": "received"}
        answers = await asyncio.gather(
            ca.post("/products/KEY-1/adjustments", json=body, headers=headers),
            cb.post("/products/KEY-1/adjustments", json=body, headers=headers),
        )
        statuses = sorted(r.status_code for r in answers)
        # Either the second waited and replayed the first's answer, or it was told to retry.
        assert statuses in ([200, 200], [200, 409]), [r.text for r in answers]
        ok = [r.json() for r in answers if r.status_code == 200]
        assert all(o == ok[0] for o in ok)
        # A later repeat on either replays it.
        again = await cb.post("/products/KEY-1/adjustments", json=body, headers=headers)
        assert again.status_code == 200 and again.json() == ok[0]
        assert (await ca.get("/products/KEY-1")).json()["quantity"] == 5
    assert assert_ledger_consistent(db, "KEY-1", initial=0) == [5]


async def test_a_stream_on_one_sees_a_change_made_through_the_other_within_a_second(
    instances: tuple[str, str],
) -> None:
    a, b = instances
    async with (
        httpx.AsyncClient(base_url=a, timeout=10) as ca,
        httpx.AsyncClient(base_url=b) as cb,
        ca.stream("GET", "/changes/stream") as stream,
    ):
        assert stream.status_code == 200
        incoming = events(stream)
        for n in range(5):
            sku = f"STREAM-{n}"
            sent = time.monotonic()
            assert (await cb.post("/products", json=product(sku))).status_code == 201
            message = await asyncio.wait_for(anext(incoming), 5)
            assert message.json["sku"] == sku
            assert message.at - sent < 1.0, message.at - sent


async def test_each_webhook_event_is_delivered_once_by_one_of_them(
    instances: tuple[str, str], db: Connection[Any]
) -> None:
    """Two subscriptions; each instance serves one subscription at a time
    (INVENTORY_WEBHOOK_CONCURRENCY=1), so both take part."""
    a, b = instances
    receivers = [start_receiver(), start_receiver()]
    try:
        async with httpx.AsyncClient(base_url=a) as ca, httpx.AsyncClient(base_url=b) as cb:
            for receiver in receivers:
                receiver.delay = 0.01
                hook = {"url": receiver.url(), "events": ["*"]}
                assert (await ca.post("/webhooks", json=hook)).status_code == 201
            db.autocommit = True
            db.execute(
                "INSERT INTO products (sku, name, price) "
                "SELECT 'P-' || g, 'n', 1 FROM generate_series(1, 100) g"
            )
            deadline = time.monotonic() + 30
            while any(len(r.received) < 100 for r in receivers):
                assert time.monotonic() < deadline, [len(r.received) for r in receivers]
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            counts = [delivered((await c.get("/metrics")).text) for c in (ca, cb)]
        for receiver in receivers:
            seqs = Counter(e["seq"] for e in receiver.events())
            assert len(seqs) == 100 and set(seqs.values()) == {1}
        attempts = db.execute(
            "SELECT count(*), count(DISTINCT (webhook_id, seq)) FROM webhook_attempts"
        ).fetchone()
        assert attempts == (200, 200)
        # Both processes took part.
        assert all(n > 0 for n in counts) and sum(counts) == 200, counts
    finally:
        for receiver in receivers:
            receiver.server.clear()
            receiver.server.stop()


def delivered(metrics: str) -> int:
    for line in metrics.splitlines():
        if line.startswith('inventory_webhook_deliveries_total{outcome="delivered"}'):
            return int(float(line.split()[-1]))
    return 0


def _holding_the_role(db: Connection[Any]) -> list[tuple[int]]:
    """The sessions holding the sequencer role (schema.sql: product_changes_sequencer_role)."""
    return db.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = 'product_change_batches'::regclass::oid AND objid = 3"
    ).fetchall()


async def test_when_the_process_numbering_the_log_is_killed_the_other_takes_over(
    postgresql: Connection[Any], pg_server: Cluster, db: Connection[Any]
) -> None:
    # The holder waits inside the server (a CALL): the server must notice the socket gone
    # while that runs, or the role stays held until the wait ends.
    db.autocommit = True
    direct = pg_server.app_dsn(postgresql.info.dbname)
    env = {"DATABASE_URL": direct, "INVENTORY_LOG_LEVEL": "WARNING"}
    with live_server(env) as first:
        for _ in range(100):  # bounded: 5 s
            if holder := _holding_the_role(db):
                break
            await asyncio.sleep(0.05)
        with live_server(env) as second:
            first.process.kill()
            first.process.communicate()  # its output pipe closed too
            killed = time.monotonic()
            while _holding_the_role(db) in ([], holder):
                assert time.monotonic() - killed < 5, "nobody took over"
                await asyncio.sleep(0.05)
            async with (
                httpx.AsyncClient(base_url=second.url, timeout=10) as client,
                client.stream("GET", "/changes/stream") as stream,
            ):
                incoming = events(stream)
                sent = time.monotonic()
                assert (await client.post("/products", json=product("AFTER-1"))).status_code == 201
                message = await asyncio.wait_for(anext(incoming), 5)
                assert message.json["sku"] == "AFTER-1"
                assert message.at - sent < 1.0

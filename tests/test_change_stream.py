"""GET /changes/stream: the change log live, over a real socket (ASGITransport would buffer)."""

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from httpx import AsyncClient
from psycopg import Connection

from app.changes.direct import session
from app.config import Settings
from tests.cluster import Cluster
from tests.conftest import LOCKED, READ, WRITE_1
from tests.helpers import age_changes, assert_problem, product
from tests.live_inprocess import live_server
from tests.sse import Message, messages

pytestmark = pytest.mark.background  # streams are fed by the change log's loops


class Stream:
    """An open stream, read message by message across calls."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._messages = messages(response)

    async def message(self, within: float = 5.0) -> Message:
        async with asyncio.timeout(within):
            return await anext(self._messages)

    async def take(self, n: int, within: float = 5.0) -> list[Message]:
        """The next `n` events (comments skipped), waiting at most `within` seconds."""
        got: list[Message] = []
        async with asyncio.timeout(within):
            while len(got) < n:
                message = await anext(self._messages)
                if message.data is not None:
                    got.append(message)
        return got


@asynccontextmanager
async def stream(url: str, path: str = "/changes/stream", **headers: str) -> AsyncIterator[Stream]:
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("GET", path, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


async def test_a_committed_change_reaches_every_open_stream_within_a_second(
    settings: Settings, db: Connection[Any]
) -> None:
    async with (
        live_server(settings) as url,
        stream(url) as first,
        stream(url) as second,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await asyncio.sleep(0.2)  # both streams are waiting
        latencies = []
        for i in range(5):
            if i % 2:
                committed = time.monotonic()
                db.execute(
                    "INSERT INTO products (sku, name, price) VALUES (%s, 'n', 1)", (f"S-{i}",)
                )
            else:
                response = await client.post("/products", json=product(f"S-{i}"))
                committed = time.monotonic()
                assert response.status_code == 201
            for opened in (first, second):
                (message,) = await opened.take(1)
                assert message.json["sku"] == f"S-{i}"
                assert message.event == "product.created" and message.id == str(i + 1)
                latencies.append(message.at - committed)

    assert max(latencies) < 1.0, latencies


async def test_a_stream_starts_with_every_event_kept_then_continues_live(
    settings: Settings, client: AsyncClient
) -> None:
    for i in range(3):
        await client.post("/products", json=product(f"OLD-{i}"))
    async with live_server(settings) as url, stream(url) as opened:
        old = await opened.take(3)
        await client.post("/products", json=product("NEW-1"))
        (new,) = await opened.take(1)

    assert [m.json["sku"] for m in old] == ["OLD-0", "OLD-1", "OLD-2"]
    assert (new.id, new.json["sku"]) == ("4", "NEW-1")


async def test_resume_with_last_event_id_across_a_restart_loses_and_repeats_nothing(
    settings: Settings, db: Connection[Any]
) -> None:
    def change(n: int) -> None:
        db.execute("INSERT INTO products (sku, name, price) VALUES (%s, 'n', 1)", (f"R-{n}",))

    async with live_server(settings) as url, stream(url) as opened:
        for n in range(10):
            change(n)
        before = await opened.take(4)
    last_id = before[-1].id
    assert last_id is not None
    # The server is gone; changes go on.
    for n in range(10, 15):
        change(n)
    async with live_server(settings) as url, stream(url, **{"Last-Event-ID": last_id}) as opened:
        after = await opened.take(11)

    seqs = [int(m.id or 0) for m in before + after]
    assert seqs == list(range(1, 16))
    assert [m.json["sku"] for m in before + after] == [f"R-{n}" for n in range(15)]


async def test_after_works_like_last_event_id_and_last_event_id_wins(
    settings: Settings, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price) SELECT 'A-' || g, 'n', 1 "
        "FROM generate_series(1, 5) g"
    )
    async with live_server(settings) as url:
        async with stream(url, "/changes/stream?after=3") as by_after:
            assert [m.id for m in await by_after.take(2)] == ["4", "5"]
        async with stream(url, "/changes/stream?after=1", **{"Last-Event-ID": "4"}) as both:
            assert [m.id for m in await both.take(1)] == ["5"]


async def test_a_comment_line_comes_at_least_every_heartbeat(settings: Settings) -> None:
    quick = settings.model_copy(update={"stream_heartbeat_seconds": 0.3})
    async with live_server(quick) as url, stream(url) as opened:
        arrivals = []
        while len(arrivals) < 5:
            message = await opened.message()
            if message.comments:
                arrivals.append(message.at)

    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < 0.3 + 0.2, gaps


async def test_streams_share_one_listening_connection_per_process(
    settings: Settings, db: Connection[Any]
) -> None:
    async with (
        live_server(settings) as url,
        stream(url),
        stream(url),
        stream(url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        await asyncio.sleep(0.3)
        listening = db.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND usename = 'inventory_app' "
            "AND query LIKE 'LISTEN%%'"
        ).fetchone()
        metrics = (await client.get("/metrics")).text
    assert listening == (1,)
    assert "inventory_change_streams_open 3.0" in metrics


async def test_an_expired_cursor_is_410_before_the_stream_starts(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price) SELECT 'A-' || g, 'n', 1 "
        "FROM generate_series(1, 3) g"
    )
    db.execute("SELECT product_changes_sequence(10000, true)")
    age_changes(db, 31)
    db.execute("SELECT product_changes_purge(30)")

    expired = await client.get("/changes/stream", headers={"Last-Event-ID": "1"})
    malformed = await client.get("/changes/stream", headers={"Last-Event-ID": "x1"})
    # A digit to str.isdigit(), not to int(): it was a 500.
    superscript = await client.get("/changes/stream", headers={"Last-Event-ID": b"\xb2"})

    assert_problem(expired, 410, "cursor_expired")
    assert_problem(malformed, 422, "validation_failed")
    assert_problem(superscript, 422, "validation_failed")


async def test_head_answers_at_once_without_a_stream(settings: Settings) -> None:
    async with live_server(settings) as url, httpx.AsyncClient(base_url=url) as client:
        started = time.monotonic()
        response = await client.head("/changes/stream")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert time.monotonic() - started < 2


async def test_open_streams_end_cleanly_when_the_server_stops(settings: Settings) -> None:
    ended: list[float] = []
    async with live_server(settings) as url:
        client = httpx.AsyncClient(base_url=url, timeout=10)
        response = await client.send(client.build_request("GET", "/changes/stream"), stream=True)

        async def read_to_the_end() -> None:
            async for _ in response.aiter_lines():
                pass
            ended.append(time.monotonic())

        reading = asyncio.create_task(read_to_the_end())
        await asyncio.sleep(0.3)
        stopping = time.monotonic()
    # live_server's exit asked uvicorn to stop and waited for it.
    await asyncio.wait_for(reading, 5)  # the body ended: no error, no hang
    await response.aclose()
    await client.aclose()
    assert ended and ended[0] - stopping < 5


async def test_a_stream_resumed_from_a_psql_session_sees_its_late_commit(
    settings: Settings, postgresql: Connection[Any], pg_server: Cluster
) -> None:
    dsn = pg_server.admin_dsn(postgresql.info.dbname)
    async with (
        live_server(settings) as url,
        stream(url) as opened,
        httpx.AsyncClient(base_url=url) as client,
    ):
        with psycopg.connect(dsn) as late:
            late.execute("INSERT INTO products (sku, name, price) VALUES ('LATE-1', 'n', 1)")
            await client.post("/products", json=product("EARLY-1"))
            (early,) = await opened.take(1)
            late.commit()
        (late_event,) = await opened.take(1)

    assert (early.json["sku"], late_event.json["sku"]) == ("EARLY-1", "LATE-1")
    assert int(late_event.id or 0) > int(early.id or 0)


def test_a_session_waiting_on_the_server_does_not_wake_ten_times_a_second(
    postgresql: Connection[Any], pg_server: Cluster
) -> None:
    # Every process waits like this all the time (its LISTEN; the queue for the sequencer
    # role): psycopg's default re-armed the wait every 0.1 s, idle CPU in every process.
    class Counting(asyncio.SelectorEventLoop):
        waits = 0

        def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
            self.waits += 1
            super().add_reader(fd, callback, *args)

    async def a_second_of_waiting(loop: Counting) -> None:
        async with session(pg_server.app_dsn(postgresql.info.dbname)) as conn:
            loop.waits = 0
            await conn.execute("SELECT pg_sleep(1)")

    loop = Counting()
    try:
        loop.run_until_complete(a_second_of_waiting(loop))
    finally:
        loop.close()

    assert loop.waits <= 2


async def test_a_cancelled_statement_is_cancelled_until_it_ends(
    postgresql: Connection[Any], pg_server: Cluster
) -> None:
    # A cancel that reaches the server before it starts the statement is dropped; sent once,
    # the sequencer's 30 s CALL then held the app's shutdown for 5 s (a test's teardown timed
    # out). This statement drops the first cancel itself, the same way.
    shrugs = (
        "DO $$ BEGIN BEGIN PERFORM pg_sleep(30); EXCEPTION WHEN query_canceled THEN NULL; END;"
        " PERFORM pg_sleep(30); END $$"
    )
    async with session(pg_server.app_dsn(postgresql.info.dbname)) as conn:
        running = asyncio.create_task(conn.execute(shrugs))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        took = time.monotonic() - started
        alive = await (await conn.execute("SELECT 1")).fetchone()

    assert took < 2, took
    assert alive == (1,)


async def test_an_idle_log_costs_the_service_no_round_trips(
    settings: Settings, db: Connection[Any]
) -> None:
    # The process numbering the log waits in the server (one CALL) instead of asking it
    # five times a second: each of those wake-ups cost the idle process more than the look.
    db.autocommit = True
    waiting = (
        "SELECT pid, query_start FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'CALL product_changes_await%' "
        "AND state = 'active'"
    )
    async with live_server(settings):
        for _ in range(100):  # bounded: 5 s
            if first := db.execute(waiting).fetchall():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        then = db.execute(waiting).fetchall()

    assert len(first) == 1
    assert then == first


async def test_under_load_the_log_is_numbered_in_batches_not_per_commit(
    settings: Settings, postgresql: Connection[Any], pg_server: Cluster, db: Connection[Any]
) -> None:
    # Each numbering is a transaction (and a NOTIFY) of its own: one per writer's commit
    # would cost the writers more than the log itself. A look that numbered something is
    # followed by the next a poll (0.2 s) later, however fast the commits come.
    def write(name: str, until: float) -> int:
        with psycopg.connect(pg_server.admin_dsn(postgresql.info.dbname), autocommit=True) as c:
            for i in itertools.count():
                if time.monotonic() > until:
                    return i
                c.execute(
                    "INSERT INTO products (sku, name, price) VALUES (%s, 'n', 1)", (f"{name}-{i}",)
                )

    db.autocommit = True
    async with live_server(settings):
        until = time.monotonic() + 1.0
        written = await asyncio.gather(
            asyncio.to_thread(write, "A", until), asyncio.to_thread(write, "B", until)
        )
        await asyncio.sleep(1)
        runs = db.execute("SELECT count(DISTINCT xmin::text) FROM product_change_batches")
        numbered = db.execute("SELECT count(*) FROM product_changes").fetchone()

    assert numbered == (sum(written),)
    assert sum(written) > 100
    assert runs.fetchone()[0] <= 15  # type: ignore[index]


async def test_one_token_holds_at_most_its_share_of_streams(settings: Settings) -> None:
    # Issue 19, finding 9: 400 streams from one token were all accepted.
    capped = settings.model_copy(update={**LOCKED, "streams_per_credential": 2})
    write, read = {"Authorization": f"Bearer {WRITE_1}"}, {"Authorization": f"Bearer {READ}"}
    async with live_server(capped) as url, httpx.AsyncClient(base_url=url) as client:
        async with stream(url, **write), stream(url, **write):
            # Streamed: a stream that is let in never ends, and this must fail, not hang.
            async with client.stream("GET", "/changes/stream", headers=write) as third:
                status, retry_after = third.status_code, third.headers.get("retry-after")
                body = await third.aread() if status != 200 else b""
            async with stream(url, **read) as other:  # another token has its own share
                await other.message()
        # Both closed: their shares came back.
        async with stream(url, **write) as again:
            await again.message()

    assert (status, json.loads(body)["code"]) == (503, "server_busy") and retry_after

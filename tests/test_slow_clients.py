"""Slow clients cannot hold the service (issue 19, findings 2 and 10): what a client that
reads or sends too slowly costs, and what it leaves in the logs."""

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import Connection
from starlette.types import Message, Receive, Scope, Send

from app.core.http.limits import BULK_KEY, RateFloor, SendDeadline
from tests.cluster import Cluster
from tests.conftest import READ, WRITE_1, ClientFactory
from tests.helpers import assert_problem, bearer
from tests.live import live_server
from tests.test_export import _copies_running, _fill


def _stalled_export(url: str, path: str = "/products", headers: str = "") -> socket.socket:
    """A GET whose client reads the status line, then nothing: its receive buffer is kept
    small, so the server's writes soon wait on it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    assert sock.recv(12).startswith(b"HTTP/1.1 200")
    return sock


@pytest.mark.slow
@pytest.mark.alone
def test_a_client_that_stops_reading_costs_one_info_line_not_a_traceback(
    postgresql: Connection[Any], pg_server: Cluster, db: Connection[Any]
) -> None:
    _fill(db, 50_000, description_chars=500)  # ~30 MB: far more than the socket buffers
    env = {
        "DATABASE_URL": pg_server.app_dsn(postgresql.info.dbname),
        "INVENTORY_SEND_TIMEOUT_SECONDS": "1",
    }
    with live_server(env) as server:
        sock = _stalled_export(server.url)
        time.sleep(4)
        sock.close()
        _, output = server.terminate_and_wait(timeout=20)

    assert "Traceback" not in output and "exc_info" not in output, output
    [ended] = [line for line in output.splitlines() if "response ended" in line]
    assert '"level": "INFO"' in ended and "took no data for 1 s" in ended


def test_the_rate_floor_cuts_a_slow_client_after_its_grace_and_never_a_fast_one() -> None:
    floor = RateFloor(min_rate=1000, grace=2.0)
    # At the floor's rate or faster: never empty, however long.
    assert all(floor.moved(1.0, 1000) for _ in range(1000))
    # A fast start buys nothing later: the bucket holds at most the grace.
    assert floor.moved(0.0, 10_000_000) and floor.left == 2.0
    # At half the rate: 0.5 s lost per second waited, empty after 4 s.
    assert [floor.moved(1.0, 500) for _ in range(4)] == [True, True, True, False]


async def test_an_import_body_that_trickles_is_cut_off_with_408(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    # Three uploads trickling a byte every 8 s held every bulk slot: the body timeout counts
    # from chunk to chunk, and each chunk came in time.
    async def trickle() -> AsyncIterator[bytes]:
        yield b"sku,name,price\n"
        for _ in range(100):
            await asyncio.sleep(0.2)
            yield b"x"

    async with make_client(bulk_min_bytes_per_second=1000, bulk_grace_seconds=1) as client:
        started = time.monotonic()
        response = await client.post(
            "/products/import", content=trickle(), headers={"content-type": "text/csv"}
        )
        elapsed = time.monotonic() - started

        problem = assert_problem(response, 408, "request_timeout")
        assert "slower than 1000 bytes/s" in problem["detail"]
        assert elapsed < 5  # cut once the second of grace is spent, not after 100 chunks
        # The slot is free again: an import that keeps up goes through.
        done = await client.post(
            "/products/import",
            content=b"sku,name,price\nOK-1,Fine,1.00\n",
            headers={"content-type": "text/csv"},
        )
        assert done.status_code == 201


async def test_a_bulk_response_taken_too_slowly_is_ended_and_a_fast_one_is_not() -> None:
    async def export(scope: Scope, receive: Receive, send: Send) -> None:
        scope[BULK_KEY] = True  # as app.core.http.streaming marks what holds a bulk slot
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(40):
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def client_taking(rate: float) -> tuple[Send, list[int]]:
        taken: list[int] = []

        async def send(message: Message) -> None:
            body = message.get("body", b"")
            await asyncio.sleep(len(body) / rate)
            taken.append(len(body))

        return send, taken

    guard = SendDeadline(export, timeout=30, min_rate=10_000, grace=0.3)
    scope = {"type": "http", "method": "GET", "path": "/products", "headers": []}
    slow_send, slow = client_taking(5_000)  # half the floor: out after ~0.6 s of waiting
    fast_send, fast = client_taking(20_000)
    await guard(dict(scope), _no_disconnect, slow_send)
    await guard(dict(scope), _no_disconnect, fast_send)

    assert 3 <= len(slow) <= 9  # the start, then a few chunks
    assert len(fast) == 42  # the start, every chunk and the end


async def _no_disconnect() -> Message:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


@pytest.mark.slow
@pytest.mark.alone
def test_slow_readers_cannot_hold_the_bulk_slots(
    postgresql: Connection[Any], pg_server: Cluster, db: Connection[Any]
) -> None:
    # Three exports read at 40 KiB/s with one read token held all three bulk slots for
    # 48 s, and a fourth export got 503. Now one token holds at most two, another token's
    # export is served at once, and exports read below the rate floor end (here 16 KiB/s
    # against 64 KiB/s, 6 s of grace: after about 8 s of waiting on the reader).
    _fill(db, 50_000, description_chars=500)  # ~30 MB of JSON
    env = {
        "DATABASE_URL": pg_server.app_dsn(postgresql.info.dbname),
        "INVENTORY_API_TOKENS": WRITE_1,
        "INVENTORY_READ_TOKENS": READ,
        "INVENTORY_POOL_TIMEOUT": "1",
        "INVENTORY_BULK_MIN_BYTES_PER_SECOND": str(64 * 1024),
        "INVENTORY_BULK_GRACE_SECONDS": "6",
    }
    auth = f"Authorization: Bearer {READ}\r\n"
    with live_server(env) as server:
        readers = [_stalled_export(server.url, headers=auth) for _ in range(2)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=_read_slowly, args=(sock, 16 * 1024, stop)) for sock in readers
        ]
        for thread in threads:
            thread.start()
        try:
            assert _copies_running(db) == 2
            # The same token's third export: past its share, told so once the wait is over.
            third = httpx.get(f"{server.url}/products", headers=bearer(READ), timeout=30)
            assert third.status_code == 503, third.text[:200]
            assert_problem(third, 503, "server_busy")
            # Another token's export is served while those two still hold theirs.
            started = time.monotonic()
            with httpx.stream(
                "GET", f"{server.url}/products", headers=bearer(WRITE_1), timeout=30
            ) as other:
                assert other.status_code == 200
                first_chunk = time.monotonic() - started
                for _ in other.iter_raw():
                    pass
            assert first_chunk < 1.5
            # The slow readers are below the floor: their COPYs end while they still read.
            deadline = time.monotonic() + 30
            while _copies_running(db) > 0:
                assert time.monotonic() < deadline, "slow readers still hold their slots"
                time.sleep(0.2)
            assert all(thread.is_alive() for thread in threads)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for sock in readers:
                sock.close()
            server.terminate_and_wait(timeout=20)


def _read_slowly(sock: socket.socket, rate: int, stop: threading.Event) -> None:
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return
        if not data:
            return
        time.sleep(len(data) / rate)


def test_the_services_transactions_cannot_stay_idle(
    postgresql: Connection[Any], pg_server: Cluster
) -> None:
    # A transaction the service leaves open (waiting on a client between two statements)
    # ends on its own: db/roles.sql sets it on the role, as it sets statement_timeout.
    with psycopg.connect(pg_server.app_dsn(postgresql.info.dbname)) as app_db:
        assert app_db.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("1min",)

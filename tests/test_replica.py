"""A real streaming replica (pg_basebackup -R) behind INVENTORY_READ_DATABASE_URL.

Each test gets its own primary and replica, since they pause, lag and stop the replica.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from app.config import Settings
from app.main import create_app
from tests.cluster import Cluster, free_port, new_cluster, psql, remove_cluster

pytestmark = [pytest.mark.slow, pytest.mark.alone]

# Everything that may be served by the replica, and how to compare two answers.
READS = (
    "/products?limit=50",
    "/products",
    "/products?sku_prefix=rep&limit=10",
    "/reports/stock",
    "/reports/movements",
    "/changes?limit=100",
)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Cluster, Cluster]]:
    primary, replica = new_cluster(), new_cluster()
    try:
        await asyncio.to_thread(primary.start)
        await asyncio.to_thread(replica.start_replica_of, primary)
        yield primary, replica
    finally:
        await asyncio.to_thread(remove_cluster, replica)
        await asyncio.to_thread(remove_cluster, primary)


Client = Callable[..., AbstractAsyncContextManager[AsyncClient]]


@pytest.fixture
def make_client(pair: tuple[Cluster, Cluster]) -> Client:
    primary, replica = pair

    @asynccontextmanager
    async def connected(
        *, replica_url: bool = True, **overrides: Any
    ) -> AsyncIterator[AsyncClient]:
        settings = Settings(
            database_url=primary.app_dsn("inventory"),
            read_database_url=replica.app_dsn("inventory") if replica_url else None,
            pool_size=3,
            pool_timeout=5.0,
            **overrides,
        )
        app = create_app(settings)
        async with (
            LifespanManager(app) as manager,
            AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://t") as client,
        ):
            yield client

    return connected


def _volatile_free(path: str, body: str) -> str:
    # The stock report carries the time it was read.
    if path == "/reports/stock":
        return body.split('"as_of"')[0]
    return body


async def _answers(client: AsyncClient) -> dict[str, str]:
    answers = {}
    for path in READS:
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text)
        answers[path] = _volatile_free(path, response.text)
    return answers


async def _until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.1)


async def _seed(client: AsyncClient, n: int) -> None:
    for i in range(n):
        created = await client.post(
            "/products", json={"sku": f"REP-{i}", "name": f"Replicated {i}", "price": "1.50"}
        )
        assert created.status_code == 201
        adjusted = await client.post(
            f"/products/REP-{i}/adjustments", json={"delta": 5 + i, "reason": "received"}
        )
        assert adjusted.status_code == 200


async def _state(client: AsyncClient) -> dict[str, Any]:
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    state: dict[str, Any] = ready.json()["replica"]
    return state


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_reads_come_from_the_replica_and_match_the_primary_once_replayed(
    pair: tuple[Cluster, Cluster], make_client: Client
) -> None:
    _, replica = pair
    replica_admin = replica.admin_dsn("inventory")
    async with (
        make_client(read_max_lag_seconds=3600) as client,
        make_client(replica_url=False) as direct,
    ):
        await _until(lambda: _in_use(client), 10, "replica in use")
        await _seed(client, 5)
        # The replica catches up within moments; then every read is the primary's answer.
        await _until(lambda: _matches(client, direct), 10, "replica answers = primary's")
        # Proof that they came from the replica: with replay paused, a new product is in
        # what the write and the lookup return (the primary), not in the pages (the replica).
        psql(replica_admin, "-c", "SELECT pg_wal_replay_pause()")
        created = await client.post(
            "/products", json={"sku": "REP-NEW", "name": "Not replayed yet", "price": "2.00"}
        )
        assert created.status_code == 201
        assert (await client.get("/products/rep-new")).status_code == 200
        await asyncio.sleep(1.5)  # the probe saw the new WAL, under the hour's lag limit
        assert (await _state(client))["state"] == "in use"
        page = (await client.get("/products?limit=50")).json()
        assert "REP-NEW" not in {p["sku"] for p in page}
        assert "REP-NEW" not in (await client.get("/products")).text
        assert (await direct.get("/products?sku_prefix=rep-new&limit=1")).json() != []
        metrics = (await client.get("/metrics")).text
        assert (_metric(metrics, 'inventory_db_reads_total{target="replica"}') or 0) > 0
        assert _metric(metrics, "inventory_db_replica_in_use") == 1
        psql(replica_admin, "-c", "SELECT pg_wal_replay_resume()")
        await _until(lambda: _matches(client, direct), 10, "the replica caught up")


async def _in_use(client: AsyncClient) -> bool:
    return bool((await _state(client))["state"] == "in use")


async def _matches(client: AsyncClient, direct: AsyncClient) -> bool:
    # Both read again each time: the primary's own answers settle too (the sequencer numbers
    # the last events a moment after their commit).
    return await _answers(client) == await _answers(direct)


async def test_a_replica_beyond_the_lag_limit_is_not_read(
    pair: tuple[Cluster, Cluster], make_client: Client
) -> None:
    _, replica = pair
    replica_admin = replica.admin_dsn("inventory")
    async with make_client(read_max_lag_seconds=1) as client:
        await _seed(client, 2)
        await _until(lambda: _in_use(client), 10, "replica in use")
        psql(replica_admin, "-c", "SELECT pg_wal_replay_pause()")
        try:
            created = await client.post(
                "/products", json={"sku": "LAG-1", "name": "Written while paused", "price": "3"}
            )
            assert created.status_code == 201
            # A commit the replica received and did not replay: behind by more than 1 s
            # within a probe or two.
            await _until(lambda: _state_is(client, "lagging"), 10, "the probe saw the replica lag")
            state = await _state(client)
            assert state["lag_seconds"] > 1
            # Every read comes from the primary: the product is there.
            page = (await client.get("/products?limit=50")).json()
            assert "LAG-1" in {p["sku"] for p in page}
            assert "LAG-1" in (await client.get("/products")).text
            changes = (await client.get("/changes?limit=100")).json()
            assert "LAG-1" in {e["sku"] for e in changes}
            assert (await client.get("/reports/stock")).json()["products"] == 3
            metrics = (await client.get("/metrics")).text
            assert _metric(metrics, "inventory_db_replica_in_use") == 0
            assert (_metric(metrics, "inventory_db_replica_lag_seconds") or 0) > 1
        finally:
            psql(replica_admin, "-c", "SELECT pg_wal_replay_resume()")
        await _until(lambda: _in_use(client), 10, "replica in use again after replay")


async def _state_is(client: AsyncClient, state: str) -> bool:
    return bool((await _state(client))["state"] == state)


async def test_a_stopped_replica_costs_clients_nothing(
    pair: tuple[Cluster, Cluster], make_client: Client
) -> None:
    primary, replica = pair
    # Probed once, at start-up: it is the reads that find the replica gone.
    async with (
        make_client(read_probe_seconds=3600) as client,
        make_client(replica_url=False) as direct,
    ):
        await _seed(client, 3)
        await _until(lambda: _matches(client, direct), 10, "replica answers = primary's")
        expected = await _answers(direct)
        await asyncio.to_thread(replica.stop)
        assert await _state_is(client, "in use")
        # Every read still answers, from the primary; the first failure marked it down.
        started = time.monotonic()
        assert await _answers(client) == expected
        assert time.monotonic() - started < 10
        assert await _state_is(client, "down")
        for _ in range(3):
            assert await _answers(client) == expected
        # Writes and lookups never depended on it.
        assert (
            await client.post("/products/REP-0/adjustments", json={"delta": -1, "reason": "sold"})
        ).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, "inventory_db_replica_up") == 0
    # With the probe running as it does by default: down while stopped, back once started.
    async with make_client() as client, make_client(replica_url=False) as direct:
        await _until(lambda: _state_is(client, "down"), 5, "the probe saw the replica down")
        assert await _matches(client, direct)
        await asyncio.to_thread(replica.start_replica_of, primary)
        await _until(lambda: _in_use(client), 15, "replica in use again after its restart")
        await _until(lambda: _matches(client, direct), 10, "restarted replica caught up")


async def test_a_replica_cut_off_from_its_primary_is_not_read(
    pair: tuple[Cluster, Cluster], make_client: Client
) -> None:
    # Its primary_conninfo points at a port nobody listens on: the replica has replayed
    # everything it received and receives nothing. It was read as fresh (lag 0) and
    # answered [] for rows the primary had.
    _, replica = pair
    replica_admin = replica.admin_dsn("inventory")
    async with make_client() as client:
        await _until(lambda: _in_use(client), 10, "replica in use")
        dead = f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=1"
        psql(replica_admin, "-c", f"ALTER SYSTEM SET primary_conninfo = '{dead}'")
        psql(replica_admin, "-c", "SELECT pg_reload_conf()")
        await _until(lambda: _state_is(client, "not streaming"), 15, "the probe saw it cut off")

        rows = "sku,name,price\n" + "".join(f"CUT-{i},Cut off {i},1.00\n" for i in range(100))
        imported = await client.post(
            "/products/import", content=rows, headers={"content-type": "text/csv"}
        )
        assert imported.status_code == 201
        await asyncio.sleep(2.5)  # probes see the primary move on, the replica not

        page = (await client.get("/products", params={"sku_prefix": "cut", "limit": 1000})).json()
        assert len(page) == 100
        state = await _state(client)
        assert state["state"] == "not streaming"
        assert state["lag_seconds"] is not None and state["lag_seconds"] > 1  # not 0
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, "inventory_db_replica_in_use") == 0

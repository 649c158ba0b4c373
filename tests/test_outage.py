"""The database fails under load: answers stay bounded, nothing acknowledged is lost."""

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from httpx import AsyncClient, Response
from psycopg import Connection

from tests.cluster import Cluster
from tests.conftest import ClientFactory
from tests.helpers import assert_problem, product

POOL_TIMEOUT = 1.5
# A request may take the pool timeout plus the time to notice a dead connection; past this
# it counts as hung.
HARD_TIMEOUT = POOL_TIMEOUT + 2.5
WORKERS = 8


class Load:
    """WORKERS loops of POST-then-GET until stopped; every answer recorded, none may hang."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.stop = asyncio.Event()
        self.acknowledged: set[str] = set()
        self.answers: list[tuple[float, Response]] = []
        self.hung: list[str] = []
        self._ids = itertools.count()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Response | None:
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(
                self.client.request(method, path, **kwargs), HARD_TIMEOUT
            )
        except TimeoutError:
            self.hung.append(f"{method} {path}")
            return None
        self.answers.append((time.monotonic() - started, response))
        return response

    async def _worker(self) -> None:
        while not self.stop.is_set():
            sku = f"LOAD-{next(self._ids)}"
            created = await self._request("POST", "/products", json=product(sku))
            if created is not None and created.status_code == 201:
                self.acknowledged.add(sku)
                await self._request("GET", f"/products/{sku.lower()}")

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(WORKERS)))


@pytest.mark.slow
@pytest.mark.alone
async def test_outage_under_load_is_503_then_recovers_and_loses_nothing(
    own_cluster: Cluster, make_client: ClientFactory
) -> None:
    async with make_client(
        database_url=own_cluster.app_dsn("inventory"), pool_size=3, pool_timeout=POOL_TIMEOUT
    ) as client:
        await outage_under_load(client, own_cluster)


async def outage_under_load(client: AsyncClient, own_cluster: Cluster) -> None:
    """`own_cluster` stops under load and starts again: every answer within the pool
    timeout, 503 while down, ready within 10 s of its return, nothing acknowledged lost."""
    load = Load(client)
    running = asyncio.create_task(load.run())
    await asyncio.sleep(1.0)
    before = len(load.acknowledged)

    await asyncio.to_thread(own_cluster.stop)
    await asyncio.sleep(2 * POOL_TIMEOUT)  # the load keeps coming while the database is down
    started = time.monotonic()
    ready = await client.get("/readyz")
    assert time.monotonic() - started < HARD_TIMEOUT
    assert_problem(ready, 503, "database_unavailable")
    during = Counter(r.status_code for _, r in load.answers)

    await asyncio.to_thread(own_cluster.start)
    back = time.monotonic()
    while (await client.get("/readyz")).status_code != 200:
        assert time.monotonic() - back < 10, "not ready 10 s after the database came back"
        await asyncio.sleep(0.1)
    acknowledged_at_recovery = len(load.acknowledged)
    await asyncio.sleep(1.0)  # and the load succeeds again
    load.stop.set()
    await running

    assert not load.hung, load.hung
    assert before > 0 and during[503] > 0
    assert len(load.acknowledged) > acknowledged_at_recovery
    for seconds, response in load.answers:
        assert response.status_code in (200, 201, 503), response.text
        assert seconds < POOL_TIMEOUT + 1.0  # the pool timeout, plus slack for a busy machine
        if response.status_code == 503:
            assert_problem(response, 503, "database_unavailable")
            assert response.headers["retry-after"] == "1"
    with psycopg.connect(own_cluster.admin_dsn("inventory")) as db:
        stored = {sku for (sku,) in db.execute("SELECT sku FROM products")}
    assert load.acknowledged <= stored, load.acknowledged - stored


def test_service_role_has_a_statement_timeout(postgresql: Connection[Any], pg_server: Any) -> None:
    with psycopg.connect(pg_server.app_dsn(postgresql.info.dbname)) as app_db:
        assert app_db.execute("SHOW statement_timeout").fetchone() == ("15s",)


async def test_query_past_the_statement_timeout_is_cut_off_and_answered_503(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    # This test's database only: a 300 ms limit for the service role, and an insert that
    # would sleep 30 s inside PostgreSQL.
    dbname = db.info.dbname
    db.execute(f"ALTER ROLE inventory_app IN DATABASE {dbname} SET statement_timeout = '300ms'")  # type: ignore[arg-type]
    db.execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.sku = 'SLOW-1' THEN PERFORM pg_sleep(30); END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER slow BEFORE INSERT ON products FOR EACH ROW EXECUTE FUNCTION slow()"
    )
    async with make_client() as client:
        started = time.monotonic()
        response = await client.post("/products", json=product("SLOW-1"))
        elapsed = time.monotonic() - started
        assert (await client.post("/products", json=product("FAST-1"))).status_code == 201
        metrics = (await client.get("/metrics")).text

    assert_problem(response, 503, "database_unavailable")
    assert response.headers["retry-after"]
    assert elapsed < 5
    assert db.execute("SELECT sku FROM products").fetchall() == [("FAST-1",)]
    assert 'inventory_db_errors_total{sqlstate_class="57"} 1.0' in metrics

"""The service behind a real PgBouncer (db/pgbouncer.sh) in transaction pooling mode."""

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from psycopg import Connection

from app.config import Settings
from app.main import create_app
from tests.cluster import REPO, Cluster, bouncer, via
from tests.conftest import ClientFactory
from tests.test_outage import POOL_TIMEOUT, outage_under_load

pytestmark = pytest.mark.slow

# Suites that between them call every endpoint (products, PATCH, DELETE, adjustments,
# movements, import, export, reports, changes and their stream, webhooks, idempotency,
# HEAD, readiness and metrics), run unchanged with every app behind PgBouncer.
SUITES = (
    "test_products.py",
    "test_patch.py",
    "test_stock.py",
    "test_listing.py",
    "test_export.py",
    "test_import.py",
    "test_import_on_conflict.py",
    "test_reports.py",
    "test_changes.py",
    "test_change_stream.py",
    "test_webhooks.py",
    "test_idempotency.py",
    "test_head.py",
    "test_observability.py",
)


def test_the_http_suites_pass_behind_pgbouncer_in_transaction_mode() -> None:
    # conftest.py: INVENTORY_TEST_PGBOUNCER=1 puts every app of the run behind a PgBouncer
    # with 2 server connections per database, INVENTORY_PGBOUNCER=1, LISTEN direct.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            "-n",
            "2",
            *(f"tests/{suite}" for suite in SUITES),
        ],
        cwd=REPO,
        env={**os.environ, "INVENTORY_TEST_PGBOUNCER": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-6000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


@pytest.mark.parametrize("pgbouncer", [False, True])
async def test_prepared_statements_are_off_exactly_when_needed(
    pgbouncer: bool, postgresql: Connection[Any], pg_server: Cluster
) -> None:
    """The proof that the bouncer really pools transactions and that INVENTORY_PGBOUNCER is
    what makes the service work there: without it, psycopg prepares a statement it runs
    often on one server connection and then finds it missing on another."""
    postgresql.autocommit = True
    postgresql.execute("INSERT INTO products (sku, name, price) VALUES ('P-1', 'n', 1)")
    direct = pg_server.app_dsn(postgresql.info.dbname)
    with bouncer(pg_server, pool_size=2) as address:
        settings = Settings(
            database_url=via(direct, address),
            listen_database_url=direct,
            pgbouncer=pgbouncer,
            pool_size=6,
            pool_timeout=5.0,
        )
        app = create_app(settings)
        async with (
            LifespanManager(app) as manager,
            AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://t") as client,
        ):
            statuses = []
            # Pages: each takes a connection of its own (lookups made together would share
            # one, app.products.queries.Lookups) and runs the same statement.
            for _ in range(10):
                answers = await asyncio.gather(
                    *(client.get("/products?limit=1") for _ in range(12))
                )
                statuses += [a.status_code for a in answers]
    if pgbouncer:
        assert set(statuses) == {200}
    else:
        assert 500 in statuses


@pytest.mark.alone
async def test_an_outage_behind_pgbouncer_is_503_within_the_pool_timeout_then_recovers(
    own_cluster: Cluster, make_client: ClientFactory
) -> None:
    """docs/api.md: the outage guarantee holds behind PgBouncer too. PgBouncer's own queue is
    bounded below the pool timeout (db/pgbouncer.sh: query_wait_timeout), and it retries
    the server after 1 s, so the service is back within 10 s of the database."""
    direct = own_cluster.app_dsn("inventory")
    with bouncer(own_cluster, pool_size=3, query_wait_timeout=1) as address:
        async with make_client(
            database_url=via(direct, address),
            pgbouncer=True,
            listen_database_url=direct,
            pool_size=3,
            pool_timeout=POOL_TIMEOUT,
        ) as client:
            await outage_under_load(client, own_cluster)

"""Fixtures: one throwaway cluster per run, a fresh database per test, the real app.

Every test that talks HTTP gets its app from `make_app`/`make_client` (or the `client`
shorthand): the real create_app, through its real lifespan, on the test's own database,
connected as the service role.
"""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from psycopg import Connection
from pydantic import SecretStr
from pytest_postgresql import factories

from app.config import Settings
from app.main import create_app
from tests.cluster import (
    REPO,
    Cluster,
    bouncer,
    make_checkout,
    new_cluster,
    new_data_dir,
    remove_cluster,
    via,
    watched,
)
from tests.databases import Databases
from tests.stock_helpers import Overlap, broken_ledgers

SCHEMA = REPO / "schema.sql"

AppFactory = Callable[..., AbstractAsyncContextManager[FastAPI]]
ClientFactory = Callable[..., AbstractAsyncContextManager[AsyncClient]]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Cluster]:
    cluster = new_cluster()
    with watched(cluster):
        try:
            cluster.start()
            yield cluster
        finally:
            remove_cluster(cluster)


# schema.sql is loaded once per run into a template database; tests get clones of it.
postgresql_noproc = factories.postgresql_noproc(load=[SCHEMA], depends_on="pg_server")


@pytest.fixture(scope="session")
def databases(postgresql_noproc: Any, pg_server: Cluster) -> Iterator[Databases]:
    pool = Databases(pg_server, template=postgresql_noproc.template_dbname)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def postgresql(databases: Databases) -> Iterator[Connection[Any]]:
    """A superuser connection to this test's database: empty tables, the schema exactly as
    schema.sql makes it (see tests/databases.py for how that is kept cheap)."""
    with databases.checkout() as conn:
        yield conn


# INVENTORY_TEST_PGBOUNCER=1: every app of `settings` connects through PgBouncer in
# transaction pooling mode with 2 server connections per database, so that its transactions
# really move between server connections (tests/test_pgbouncer.py runs the HTTP suites so).
THROUGH_PGBOUNCER = os.environ.get("INVENTORY_TEST_PGBOUNCER") == "1"


@pytest.fixture(scope="session")
def pg_bouncer(pg_server: Cluster) -> Iterator[str | None]:
    """The address of the session's PgBouncer, or None when the tests go direct."""
    if not THROUGH_PGBOUNCER:
        yield None
        return
    with bouncer(pg_server, pool_size=2) as address:
        yield address


@pytest.fixture
def settings(postgresql: Connection[Any], pg_server: Cluster, pg_bouncer: str | None) -> Settings:
    """The app connects as the service role, as in production, not as the superuser."""
    direct = pg_server.app_dsn(postgresql.info.dbname)
    if pg_bouncer is not None:
        return Settings(
            database_url=via(direct, pg_bouncer),
            pgbouncer=True,
            listen_database_url=direct,
            pool_size=2,
            pool_timeout=2.0,
        )
    return Settings(database_url=direct, pool_size=2, pool_timeout=2.0)


@pytest.fixture
def make_app(settings: Settings, request: pytest.FixtureRequest) -> AppFactory:
    """`async with make_app(**overrides) as app`: the app started on the test's database,
    with settings changed by `overrides`; stopped (pool closed) on exit.

    Its background loops (the change log's sequencer and LISTEN, webhook deliveries,
    purges, the replica probe) run only for a test marked `background` or `slow` (system
    tests run the service whole): the others are about what requests do, and starting and
    stopping the loops took most of their time."""
    background = any(request.node.get_closest_marker(m) for m in ("background", "slow"))

    @asynccontextmanager
    async def started(**overrides: Any) -> AsyncIterator[FastAPI]:
        app = create_app(settings.model_copy(update=overrides), background=background)
        async with LifespanManager(app) as manager:
            yield manager.app  # type: ignore[misc]

    return started


@pytest.fixture
def make_client(make_app: AppFactory) -> ClientFactory:
    """`async with make_client(**overrides) as client`: an httpx client on make_app's app."""

    @asynccontextmanager
    async def connected(**overrides: Any) -> AsyncIterator[AsyncClient]:
        async with (
            make_app(**overrides) as app,
            AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client,
        ):
            yield client

    return connected


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[AsyncClient]:
    async with make_client() as c:
        yield c


@pytest.fixture
async def wide_client(make_client: ClientFactory) -> AsyncIterator[AsyncClient]:
    """The app with 20 connections: requests really run side by side in PostgreSQL."""
    async with make_client(pool_size=20, pool_timeout=30.0) as c:
        yield c


@pytest.fixture
async def own_cluster() -> AsyncIterator[Cluster]:
    """A cluster this test alone may stop and start."""
    cluster = new_cluster()
    try:
        await asyncio.to_thread(cluster.start)
        yield cluster
    finally:
        await asyncio.to_thread(remove_cluster, cluster)


@pytest.fixture
def db(postgresql: Connection[Any]) -> Connection[Any]:
    """A superuser connection to the test's database, in autocommit, for checks and setup."""
    postgresql.autocommit = True
    return postgresql


@pytest.fixture
def ledgers_consistent(db: Connection[Any]) -> Iterator[None]:
    """After the test: whatever sequence of requests it made, every ledger still adds up."""
    yield
    assert broken_ledgers(db) == []


@pytest.fixture
def overlap(postgresql: Connection[Any], pg_server: Cluster) -> Overlap:
    """Watches pg_stat_activity while in use: how many adjustments really ran side by side."""
    dbname = postgresql.info.dbname
    return Overlap(pg_server.admin_dsn(dbname), dbname)


# Two read-write tokens and one read-only token, for the `locked` app.
WRITE_1, WRITE_2, READ = "w-token-Zq81x", "w-token-second-7Hk", "r-token-Pl0p"
LOCKED = {"api_tokens": SecretStr(f"{WRITE_1}, {WRITE_2}"), "read_tokens": SecretStr(READ)}


@pytest.fixture
async def locked(make_client: ClientFactory) -> AsyncIterator[AsyncClient]:
    """A client of the app started with the LOCKED tokens (send them with helpers.bearer)."""
    async with make_client(**LOCKED) as c:
        yield c


@pytest.fixture
def analyst_dsn(db: Connection[Any], pg_server: Cluster) -> Iterator[str]:
    """The URL of a person's login role that is a member of inventory_reader, made as the
    docs/running.md tells an admin to (CREATE ROLE ... LOGIN; GRANT inventory_reader TO ...)."""
    name, password = f"analyst_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    db.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")  # type: ignore[arg-type]
    db.execute(f"GRANT inventory_reader TO {name}")  # type: ignore[arg-type]
    try:
        # Over TCP with a password, as a person logs in (only the superuser uses the socket).
        host = f"{pg_server.app_host}:{pg_server.port}"
        yield f"postgresql://{name}:{password}@{host}/{db.info.dbname}"
    finally:
        db.execute(f"DROP ROLE {name}")  # type: ignore[arg-type]


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own, run from a copied checkout (its schema.sql may be edited)."""
    cluster = Cluster(
        data_dir=new_data_dir(), script=make_checkout(tmp_path / "checkout") / "db" / "cluster.sh"
    )
    try:
        yield cluster
    finally:
        remove_cluster(cluster)


@pytest.fixture
def connect(postgresql: Connection[Any], pg_server: Cluster) -> Iterator[Any]:
    """Opens more superuser sessions on the test's database; closes them afterwards."""
    opened: list[Connection[Any]] = []

    def _connect(autocommit: bool = False) -> Connection[Any]:
        conn = psycopg.connect(pg_server.admin_dsn(postgresql.info.dbname), autocommit=autocommit)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def app_db(postgresql: Connection[Any], pg_server: Cluster) -> Iterator[Connection[Any]]:
    """A session as the service's role."""
    with psycopg.connect(pg_server.app_dsn(postgresql.info.dbname), autocommit=True) as conn:
        yield conn

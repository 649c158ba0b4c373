"""Fixtures: one throwaway cluster per run, a fresh database per test, the real app."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from psycopg import Connection
from pytest_postgresql import factories

from app.config import Settings
from app.main import create_app
from tests.cluster import REPO, Cluster, new_cluster, remove_cluster

SCHEMA = REPO / "schema.sql"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Cluster]:
    cluster = new_cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        remove_cluster(cluster)


# Each test gets a database cloned from a template that has schema.sql loaded once.
postgresql_noproc = factories.postgresql_noproc(load=[SCHEMA], depends_on="pg_server")
postgresql = factories.postgresql("postgresql_noproc")


@pytest.fixture
def settings(postgresql: Connection[Any], pg_server: Cluster) -> Settings:
    """The app connects as the service role, as in production, not as the superuser."""
    return Settings(
        database_url=pg_server.app_dsn(postgresql.info.dbname), pool_size=4, pool_timeout=2.0
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application) as manager:
        yield manager.app  # type: ignore[misc]


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as c:
        yield c


@pytest.fixture
async def wide_client(settings: Settings) -> AsyncIterator[AsyncClient]:
    """The app with 20 connections: requests really run side by side in PostgreSQL."""
    app = create_app(settings.model_copy(update={"pool_size": 20, "pool_timeout": 30.0}))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        yield client


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

"""app/database.py: one pool shared by raw queries and SQLAlchemy, checked after idle spells,
and the one write runner with its bounded retries."""

import asyncio
from typing import Any

import psycopg
import pytest
from httpx import AsyncClient
from psycopg import Connection
from sqlalchemy import func, select

from app.config import Settings
from app.core.errors import ConflictRetry
from app.database import CHECK_AFTER_IDLE, open_database
from app.models import Product
from tests.helpers import product


async def test_sessions_and_raw_queries_share_the_pool_without_leaking(settings: Settings) -> None:
    assert settings.database_url
    small = settings.model_copy(update={"pool_size": 2})
    async with open_database(settings.database_url, small) as database:
        for _ in range(6):
            async with database.session() as session, session.begin():
                await session.execute(select(func.count()).select_from(Product))
            async with database.connection() as conn:
                # Back from SQLAlchemy, a connection is in autocommit again for raw queries.
                assert conn.autocommit
                # SQLAlchemy adds its notice handler on every checkout; it must not pile up.
                assert len(conn._notice_handlers) <= 1

        stats = database.pool.get_stats()
        assert stats["pool_max"] == 2
        assert stats["pool_size"] == 2


async def test_session_writes_are_transactional(settings: Settings) -> None:
    assert settings.database_url
    async with open_database(settings.database_url, settings) as database:
        async with database.session() as session:
            session.add(Product(sku="TX-1", name="n", price=1))
            await session.flush()  # the INSERT reaches PostgreSQL inside a transaction
            await session.rollback()
        async with database.session() as session:
            count = await session.scalar(select(func.count()).select_from(Product))
        assert count == 0


async def test_a_connection_killed_while_idle_is_replaced_before_a_request_draws_it(
    client: AsyncClient, db: Connection[Any]
) -> None:
    assert (await client.post("/products", json=product("IDLE-1"))).status_code == 201
    # One of the pool's connections dies (a backend crash, an idle timeout, a proxy).
    killed = db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE usename = 'inventory_app' AND datname = current_database() LIMIT 1"
    ).fetchone()
    assert killed == (True,)
    await asyncio.sleep(CHECK_AFTER_IDLE + 0.2)

    statuses = [(await client.get("/products/idle-1")).status_code for _ in range(10)]

    assert statuses == [200] * 10


async def test_write_retries_a_serialization_failure_and_then_succeeds(settings: Settings) -> None:
    assert settings.database_url
    calls = 0

    async def flaky(conn: psycopg.AsyncConnection[Any]) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            # A real 40001 from the server, raised inside the write's transaction.
            await conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"
            )
        return calls

    async with open_database(settings.database_url, settings) as database:
        assert await database.write(flaky) == 3


async def test_write_gives_up_after_its_attempts_with_conflict_retry(settings: Settings) -> None:
    assert settings.database_url
    calls = 0

    async def deadlocked(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'dl' USING ERRCODE = '40P01'; END $$")

    tight = settings.model_copy(update={"conflict_attempts": 2})
    async with open_database(settings.database_url, tight) as database:
        with pytest.raises(ConflictRetry):
            await database.write(deadlocked)
        # Not replayable (it consumed a request body): one attempt only.
        calls = 0
        with pytest.raises(ConflictRetry):
            await database.write(deadlocked, replayable=False)
        assert calls == 1

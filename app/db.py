"""One psycopg connection pool per process, shared by raw queries and SQLAlchemy."""

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from app.config import Settings

logger = logging.getLogger("app.db")


class PooledConnection(AsyncConnection[Any]):
    """An AsyncConnection that SQLAlchemy can check out many times without leaking.

    SQLAlchemy's psycopg dialect adds its notice handler on every checkout; on a pooled
    connection the handler list would grow without bound. Removing it first keeps one.
    """

    # When the pool last took it back (see _check_if_idle); 0: never, so checked first.
    returned_at = 0.0

    def add_notice_handler(self, callback: Callable[..., Any]) -> None:
        with suppress(ValueError):
            self.remove_notice_handler(callback)
        super().add_notice_handler(callback)


# A connection back in the pool less than this long ago is not checked again at checkout:
# under load every request saved a round trip; after an idle spell (say, a database
# restart), connections are still checked before use.
CHECK_AFTER_IDLE = 1.0


async def _check_if_idle(conn: PooledConnection) -> None:
    if time.monotonic() - conn.returned_at >= CHECK_AFTER_IDLE:
        await AsyncConnectionPool.check_connection(conn)


async def _reset(conn: AsyncConnection[Any]) -> None:
    # Raw queries expect autocommit (one round trip per statement); SQLAlchemy switches a
    # connection to transactional mode when it checks one out. Undo that on the way back.
    # Tested first: each setter is an awaited round through psycopg's machinery, even
    # when nothing changes, and this runs on every return to the pool.
    if not conn.autocommit:
        await conn.set_autocommit(True)
    if conn.isolation_level is not None:
        await conn.set_isolation_level(None)
    if isinstance(conn, PooledConnection):
        conn.returned_at = time.monotonic()


@dataclass(frozen=True)
class Database:
    """The open pool, the engine on top of it, and a session factory bound to it."""

    pool: AsyncConnectionPool[PooledConnection]
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]


@asynccontextmanager
async def open_database(dsn: str, settings: Settings) -> AsyncIterator[Database]:
    """Open the pool (waiting up to pool_timeout for the first connections) and yield it.

    A database that is down at start-up does not stop the service: the pool keeps
    connecting in the background, requests get 503 and /readyz says not ready meanwhile.
    The pool is closed on exit; engine.dispose() alone would not close it.
    """
    pool = AsyncConnectionPool(
        dsn,
        connection_class=PooledConnection,
        kwargs={"autocommit": True},
        min_size=settings.pool_size,
        max_size=settings.pool_size,
        timeout=settings.pool_timeout,
        reconnect_timeout=settings.pool_reconnect_timeout,
        # A connection the server dropped (restart, failover) is caught at checkout and
        # replaced, instead of failing the request that happened to draw it.
        check=_check_if_idle,
        reset=_reset,
        # close_returns: SQLAlchemy "closes" connections; the pool takes them back.
        close_returns=True,
        open=False,
        name="inventory",
    )
    try:
        await pool.open(wait=True, timeout=settings.pool_timeout)
    except PoolTimeout:
        logger.warning("database not reachable at start-up; serving 503 until it is (see /readyz)")
    engine = create_async_engine(
        "postgresql+psycopg://",
        poolclass=NullPool,
        async_creator=pool.getconn,
        isolation_level="READ COMMITTED",
    )
    try:
        yield Database(pool, engine, async_sessionmaker(engine, expire_on_commit=False))
    finally:
        await engine.dispose()
        await pool.close()


# async: FastAPI runs a plain `def` dependency in a thread pool, a hop that cost about a
# fifth of a lookup's time (py-spy, bench/).
async def get_database(request: Request) -> Database:
    database: Database = request.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]

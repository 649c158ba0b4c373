"""The database: one psycopg pool per process, the SQLAlchemy engine on it, the one write runner.

Request code gets connections here and nowhere else: `Database.connection()` for reads and
single statements, `Database.write()` for every write (its transaction and the one bounded
retry loop for serialization failures and deadlocks), `Database.bulk()` for exports and
imports (a share of the pool, no statement timeout). Statements are built from app.models
and compiled once with `compile_once`.
"""

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import anyio
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.expression import ClauseElement

from app.config import Settings
from app.core.access import ANONYMOUS
from app.core.errors import RETRYABLE, ConflictRetry, DatabaseUnavailable, ServerBusy

logger = logging.getLogger("app.database")

T = TypeVar("T")
Connection = AsyncConnection[Any]
Work = Callable[[Connection], Awaitable[T]]

# Full jitter (sleep uniformly in [0, base * 2^n)) keeps retrying requests from colliding
# again in lock step; a few milliseconds is plenty for row-level conflicts.
RETRY_BASE_DELAY = 0.005
# A connection back in the pool less than this long ago is not checked again at checkout:
# under load that saves a round trip per request; after an idle spell (say, a database
# restart) connections are still checked before use.
CHECK_AFTER_IDLE = 1.0
# Bulk work (an export of millions of rows, an import) is one statement that may rightly
# outlast the service role's statement_timeout (db/roles.sql); it is bounded by its slots.
_LIFT_STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = 0"

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Statement:
    """A statement built from the models, compiled once to psycopg's `%(name)s` style."""

    sql: str
    defaults: Mapping[str, Any]

    def params(self, **values: Any) -> dict[str, Any]:
        """The parameters for one execution: literals the compiler lifted out, then `values`."""
        return {**self.defaults, **values}


class Bound(NamedTuple):
    """A statement and its parameters, to be run later (a stream): what a query function
    hands a route, which passes it to the response that runs it without reading it."""

    sql: str | psycopg.sql.Composed
    params: Mapping[str, Any]


def compile_once(statement: ClauseElement) -> Statement:
    """Compile a SQLAlchemy statement for psycopg; run the result with `Statement.params`."""
    compiled = statement.compile(dialect=_DIALECT)
    return Statement(str(compiled), dict(compiled.params or {}))


def compile_literal(statement: ClauseElement) -> str:
    """Compile a statement with its literal values inline: a fragment to combine into SQL."""
    return str(statement.compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True}))


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


async def _check_if_idle(conn: PooledConnection) -> None:
    if time.monotonic() - conn.returned_at >= CHECK_AFTER_IDLE:
        await AsyncConnectionPool.check_connection(conn)


async def _reset(conn: PooledConnection) -> None:
    # Request code expects autocommit (one round trip per statement); SQLAlchemy switches a
    # connection to transactional mode when it checks one out. Undo that on the way back.
    # Tested first: each setter is an awaited round through psycopg, even when nothing
    # changes, and this runs on every return to the pool.
    if not conn.autocommit:
        await conn.set_autocommit(True)
    if conn.isolation_level is not None:
        await conn.set_isolation_level(None)
    conn.returned_at = time.monotonic()


class BulkSlots:
    """A share of the pool for exports and imports, so they cannot starve other requests.

    Bulk work holds a connection for seconds to minutes; at most `slots` of them run at
    once per process, and at most `per_credential` of those for one token, so that one
    token (however slow its clients) never holds them all. The rest wait up to `timeout`
    and then get 503. An open API's requests share one credential and are not counted
    apart.
    """

    def __init__(self, slots: int, *, per_credential: int, timeout: float) -> None:
        self.slots = slots
        self._semaphore = anyio.Semaphore(slots)
        self._per_credential = min(per_credential, slots)
        # One per token that ever ran bulk work: tokens are configured, so this is bounded.
        self._shares: dict[str, anyio.Semaphore] = {}
        self._timeout = timeout

    @asynccontextmanager
    async def hold(self, credential: str = ANONYMOUS) -> AsyncIterator[None]:
        share = None
        if credential != ANONYMOUS:
            share = self._shares.setdefault(credential, anyio.Semaphore(self._per_credential))
        with anyio.move_on_after(self._timeout) as waiting:
            if share is not None:
                await share.acquire()
            try:
                await self._semaphore.acquire()
            except BaseException:
                if share is not None:
                    share.release()
                raise
        if waiting.cancelled_caught:
            if share is not None and share.value == 0:
                raise ServerBusy(
                    f"This token already runs {self._per_credential} exports or imports "
                    "here. Retry when one has ended."
                )
            raise DatabaseUnavailable("Too many exports and imports are running. Retry later.")
        try:
            yield
        finally:
            self._semaphore.release()
            if share is not None:
                share.release()


@asynccontextmanager
async def savepoint(conn: Connection) -> AsyncIterator[None]:
    """A savepoint inside the write's transaction: a failure here undoes only this block."""
    async with conn.transaction():
        yield


class Database:
    """The open pool and everything request code does with it."""

    def __init__(self, pool: AsyncConnectionPool[PooledConnection], settings: Settings) -> None:
        self.pool = pool
        self.engine = create_async_engine(
            "postgresql+psycopg://",
            poolclass=NullPool,
            # close_returns (below): SQLAlchemy "closes" connections; the pool takes them back.
            async_creator=pool.getconn,
            isolation_level="READ COMMITTED",
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.attempts = settings.conflict_attempts
        # One connection always stays for everything else (with pool_size 1 there is none).
        self.bulk_slots = BulkSlots(
            max(1, min(settings.bulk_connections, settings.pool_size - 1)),
            per_credential=settings.bulk_per_credential,
            timeout=settings.pool_timeout,
        )

    def connection(self) -> AbstractAsyncContextManager[PooledConnection]:
        """`async with db.connection() as conn`: an autocommit connection from the pool.

        Raises PoolTimeout (answered 503) when none frees up within the pool timeout.
        """
        return self.pool.connection()

    async def write(
        self,
        work: Work[T],
        *,
        transaction: bool = True,
        replayable: bool = True,
        bulk: bool = False,
        credential: str = ANONYMOUS,
    ) -> T:
        """Run `work(conn)` as one unit and return its result.

        With `transaction` (the default) the unit is one transaction; without, `work` must
        be atomic on its own (a single statement on the autocommit connection). A
        serialization failure or deadlock runs the whole unit again, at most
        `conflict_attempts` times, then raises ConflictRetry (503). `work` must therefore
        hold nothing across calls; pass `replayable=False` when it cannot run twice (it
        consumes a request body), and it runs once. `bulk` work (an import) takes a bulk
        slot (counted against `credential`'s share) and runs without the statement timeout.
        """
        attempts = self.attempts if replayable else 1
        for n in range(attempts):
            try:
                async with self._slot(bulk, credential), self.pool.connection() as conn:
                    if not transaction:
                        return await work(conn)
                    async with conn.transaction():
                        if bulk:
                            await conn.execute(_LIFT_STATEMENT_TIMEOUT)
                        return await work(conn)
            except psycopg.Error as exc:
                if exc.sqlstate not in RETRYABLE:
                    raise
                if n == attempts - 1:
                    raise ConflictRetry() from exc
                logger.info(
                    "retrying after SQLSTATE %s (attempt %d of %d)", exc.sqlstate, n + 1, attempts
                )
            await asyncio.sleep(random.uniform(0, RETRY_BASE_DELAY * 2**n))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _slot(self, bulk: bool, credential: str) -> AbstractAsyncContextManager[None]:
        return self.bulk_slots.hold(credential) if bulk else nullcontext()

    @asynccontextmanager
    async def bulk(self, credential: str = ANONYMOUS) -> AsyncIterator[Connection]:
        """A bulk slot and a connection in a transaction without a statement timeout.

        For exports, imports and other long streams: at most `bulk_connections` at once
        per process, `bulk_per_credential` of them for one token; more wait up to the pool
        timeout, then DatabaseUnavailable (503), or ServerBusy (503) past the token's share.
        """
        hold = self.bulk_slots.hold(credential)
        async with hold, self.pool.connection() as conn, conn.transaction():
            await conn.execute(_LIFT_STATEMENT_TIMEOUT)
            yield conn

    def session(self) -> AsyncSession:
        """An ORM session on the same pool, for paths where its cost does not matter.

        No route uses one: request paths run statements compiled once (`compile_once`).
        """
        return self.sessions()


def connection_options(settings: Settings) -> dict[str, Any]:
    """What every pooled connection is opened with.

    Behind PgBouncer's transaction pooling, consecutive transactions of one client run on
    different server connections: a statement prepared on one is missing on the next, and
    PgBouncer 1.18 cannot carry them ("prepared statement _pg3_0 does not exist"). psycopg
    then never prepares (prepare_threshold None); statements that pass prepare=False (the
    listing's selective searches) are unprepared either way.
    """
    options: dict[str, Any] = {"autocommit": True}
    if settings.pgbouncer:
        options["prepare_threshold"] = None
    return options


@asynccontextmanager
async def open_database(
    dsn: str, settings: Settings, *, wait: bool = True
) -> AsyncIterator[Database]:
    """Open the pool (waiting up to pool_timeout for the first connections, unless not
    `wait`) and yield it.

    A database that is down at start-up does not stop the service: the pool keeps
    connecting in the background, requests get 503 and /readyz says not ready meanwhile.
    The pool is closed on exit; engine.dispose() alone would not close it.
    """
    pool: AsyncConnectionPool[PooledConnection] = AsyncConnectionPool(
        dsn,
        connection_class=PooledConnection,
        kwargs=connection_options(settings),
        min_size=settings.pool_size,
        max_size=settings.pool_size,
        timeout=settings.pool_timeout,
        reconnect_timeout=settings.pool_reconnect_timeout,
        # A connection the server dropped (restart, failover) is caught at checkout and
        # replaced, instead of failing the request that happened to draw it.
        check=_check_if_idle,
        reset=_reset,
        close_returns=True,
        open=False,
        name="inventory",
    )
    try:
        await pool.open(wait=wait, timeout=settings.pool_timeout)
    except PoolTimeout:
        logger.warning("database not reachable at start-up; serving 503 until it is (see /readyz)")
    database = Database(pool, settings)
    try:
        yield database
    finally:
        await database.engine.dispose()
        await pool.close()

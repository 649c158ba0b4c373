"""A connection of its own, outside every pool, for what needs a session: LISTEN, the
sequencer role's lock."""

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg import waiting
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

# Noticed within about half a minute when the other end silently goes away.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
SERVER_KEEPALIVES = (
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
)

# How often a wait on the socket wakes up with nothing to read. psycopg's default (0.1 s)
# lets blocking code notice Ctrl-C; a task's cancellation ends the wait at once anyway, and
# these connections wait all the time (a LISTEN, a queue for the sequencer role, a wait in
# the server): ten wake-ups a second each, every process, would be most of what the service
# spends idle.
IDLE_WAKE_SECONDS = 60.0
# A statement still running when its task is cancelled is cancelled in the server, and
# waited for this long; the cancel is sent again this often meanwhile. Once is not enough: a
# cancel that reaches the server before it starts the statement is dropped (it comes while
# the server is reading a command), and a CALL of the sequencer's then ran for its 30 s.
CANCEL_SECONDS = 5.0
# How long opening one of these connections may take (unless the URL says otherwise).
CONNECT_SECONDS = 10
RECANCEL_SECONDS = 0.1

_RV = TypeVar("_RV")


class _Session(psycopg.AsyncConnection[Any]):
    async def wait(
        self,
        gen: PQGen[_RV],
        interval: float = IDLE_WAKE_SECONDS,
        timeout: float | None = None,  # noqa: ASYNC109  (psycopg's own signature)
    ) -> _RV:
        try:
            return await waiting.wait_async(gen, self.pgconn.socket, interval, timeout)
        except anyio.get_cancelled_exc_class():
            # psycopg's own handling cancels in the server too, but under anyio's
            # cancellation (delivered again at every await) it is cut short and warns; the
            # statement would run on until the server noticed the socket gone.
            with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_SECONDS):
                if self.pgconn.transaction_status == TransactionStatus.ACTIVE:
                    ended = anyio.Event()
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(self._cancel_until, ended)
                        try:
                            await waiting.wait_async(gen, self.pgconn.socket, interval)
                        except psycopg.Error:
                            pass  # the statement's end is all that is waited for
                        finally:
                            ended.set()
            raise

    async def _cancel_until(self, ended: anyio.Event) -> None:
        while not ended.is_set():
            with contextlib.suppress(psycopg.Error):
                await self.cancel_safe(timeout=CANCEL_SECONDS)
            with anyio.move_on_after(RECANCEL_SECONDS):
                await ended.wait()


@asynccontextmanager
async def session(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection for the block, closed however the block ends (cancelled
    too). Keepalives on both ends: a session lock it holds is released, a LISTEN dropped,
    when its host silently goes away."""
    # Never cut off midway: a connection abandoned in its start-up (a service stopped right
    # after it started) left its server process waiting for the password until
    # authentication_timeout (60 s), and a DROP DATABASE waited behind it. Bounded by
    # connect_timeout instead. What the URL sets wins over these defaults.
    conninfo = make_conninfo(
        "", **{"connect_timeout": CONNECT_SECONDS, **KEEPALIVES, **conninfo_to_dict(dsn)}
    )
    with anyio.CancelScope(shield=True):
        conn = await _Session.connect(conninfo, autocommit=True)
    try:
        await conn.execute(SERVER_KEEPALIVES)
        yield conn
    finally:
        # Shielded: an anyio cancellation would interrupt every await of the close too.
        with anyio.CancelScope(shield=True):
            await conn.close()

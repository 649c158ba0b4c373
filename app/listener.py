"""The process's one LISTEN connection: the sequencer's NOTIFYs, turned into wake-ups.

The sequencer (any process's) NOTIFYs `product_changes` when it has numbered events. One
connection per process listens, however many streams are open, on
INVENTORY_LISTEN_DATABASE_URL (a direct connection: PgBouncer's transaction pooling cannot
carry LISTEN). It reconnects on its own; notifications sent while it was away are lost, so
a reconnect wakes everyone as if something had happened, and the pollers cover the gap.
"""

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo

logger = logging.getLogger("app.listener")

NUMBERED = "product_changes"
# Reconnect backoff: first retry, cap.
RETRY_FIRST = 0.1
RETRY_MAX = 5.0


class Listener:
    """Calls `on_numbered` when events were numbered, and after every (re)connection.

    The callback must be quick and not raise.
    """

    def __init__(self, dsn: str | None, *, on_numbered: Callable[[], None]) -> None:
        self._dsn = dsn
        self._on_numbered = on_numbered
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled; with no URL (PgBouncer and no direct one), do nothing."""
        dsn = self._dsn
        if dsn is None:
            await asyncio.Event().wait()  # never set: until cancelled
            return
        delay = RETRY_FIRST
        while True:
            try:
                # TCP keepalives: a connection that died silently (a dropped network path)
                # is noticed within about half a minute.
                conninfo = make_conninfo(
                    dsn,
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                )
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            except psycopg.Error as exc:
                logger.warning("LISTEN connection failed, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {NUMBERED}")
                    delay = RETRY_FIRST
                    self.connected.set()
                    # Whatever was notified while nobody listened: look now.
                    self._on_numbered()
                    async for _ in conn.notifies():
                        self._on_numbered()
            except psycopg.Error as exc:
                logger.warning("LISTEN connection lost, reconnecting: %s", exc)
            finally:
                self.connected.clear()
            await asyncio.sleep(delay)

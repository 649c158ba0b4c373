"""The process's one LISTEN connection: the sequencer's NOTIFYs, turned into wake-ups.

The sequencer (whichever process holds the role, or psql) NOTIFYs `product_changes` when it
has numbered events. One connection per process listens, however many streams are open, on
INVENTORY_LISTEN_DATABASE_URL (a direct connection: PgBouncer's transaction pooling
cannot carry LISTEN). Notifications sent while it was away are lost, so every (re)connection
wakes everyone as if something had happened.
"""

import asyncio
import logging
from collections.abc import Callable

from app.changes.direct import session

logger = logging.getLogger("app.changes")

NUMBERED = "product_changes"


class Listener:
    """Calls `on_numbered` when events were numbered, and after every connection.

    The callback must be quick and not raise. `connected` is set while it listens.
    """

    def __init__(self, dsn: str | None, *, on_numbered: Callable[[], None]) -> None:
        self._dsn = dsn
        self._on_numbered = on_numbered

    async def run(self) -> None:
        """Listen until cancelled (a lost connection raises: the supervisor reconnects);
        with no URL (PgBouncer and no direct one), do nothing."""
        if self._dsn is None:
            await asyncio.Event().wait()  # never set: until cancelled
            return
        async with session(self._dsn) as conn:
            await conn.execute(f"LISTEN {NUMBERED}")
            # Whatever was notified while nobody listened: look now.
            self._on_numbered()
            async for _ in conn.notifies():
                self._on_numbered()

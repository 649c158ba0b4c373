"""Keeping the change log: numbering committed events, removing old ones.

Numbering (schema.sql: product_changes_sequence) needs one caller at a time, and any will
do. One service process holds the sequencer role (a session lock, taken on a connection of
its own; the others wait for it there, at no cost, and one takes over the moment the
holder's session ends) and looks for committed events every `poll_seconds`: writers do not
notify (a NOTIFY serialises commits), so somebody has to look, and only the holder does. It
looks from inside the server (product_changes_await, which NOTIFYs what it numbers), so an
idle log costs an index probe there and never wakes the process. Behind PgBouncer with no
direct connection there is no session: then every process looks, a query each time, and
the function's own lock lets one number at a time.

Retention removes events older than INVENTORY_CHANGES_RETENTION_DAYS (never fewer than the
database's own floor) in batches, every purge interval, in every process (one at a time).
"""

import logging
from collections.abc import Callable

import anyio

from app.changes import queries
from app.changes.direct import session
from app.database import Connection, Database

logger = logging.getLogger("app.changes")

# Statements numbered per call (one short transaction each). A call that numbers this many
# events is followed by another at once: a backlog (a restart, a big import) drains fast.
NUMBER_BATCH = 10_000
PURGE_BATCH = 10_000
# How long one wait in the server lasts at most (the process wakes that often when idle).
AWAIT_SECONDS = 30.0
# The sequencer role's session lock (schema.sql: product_changes_sequencer_role), waited for
# as long as another process holds it, and then the waits in the server: past the service
# role's statement_timeout. If this process dies in such a wait, the server notices its
# socket gone within a second and ends the session, releasing the role for the next one.
WAIT_FOR_ROLE = (
    "SET statement_timeout = 0; SET client_connection_check_interval = 1000;"
    " SELECT product_changes_sequencer_role()"
)


class Sequencer:
    """Numbers committed events while this process holds the role.

    `direct` is a connection string for the role's session; the process's LISTEN, on the
    same, hears the numbering. None: every process looks, on `db`, and `on_numbered` runs
    after it numbered some (no LISTEN then).
    """

    def __init__(
        self,
        direct: str | None,
        db: Database,
        *,
        poll_seconds: float,
        on_numbered: Callable[[], None],
    ) -> None:
        self._direct = direct
        self._db = db
        self._poll = poll_seconds
        self._on_numbered = on_numbered
        self.holding = False

    async def run(self) -> None:
        """Until cancelled; a lost connection raises (the supervisor starts it again)."""
        if self._direct is None:
            while True:
                async with self._db.connection() as conn:
                    await self._number(conn)
                await anyio.sleep(self._poll)
        async with session(self._direct) as conn:
            # Waits here while another process holds the role.
            await conn.execute(WAIT_FOR_ROLE)
            self.holding = True
            logger.info("this process numbers the change log")
            try:
                while True:
                    # Every process, this one too, hears what it numbers from its NOTIFYs.
                    numbered = await queries.await_numbered(
                        conn,
                        poll_seconds=self._poll,
                        wait_seconds=AWAIT_SECONDS,
                        max_rows=NUMBER_BATCH,
                    )
                    if numbered is None:  # someone else is numbering (psql)
                        await anyio.sleep(self._poll)
            finally:
                self.holding = False

    async def _number(self, conn: Connection) -> None:
        numbered = 0
        while (batch := await queries.number(conn, max_rows=NUMBER_BATCH)) is not None:
            numbered += batch
            if batch < NUMBER_BATCH:
                break
        if numbered:
            self._on_numbered()


class Retention:
    """Removes events older than `days` every `interval_seconds`, in batches."""

    def __init__(self, db: Database, *, days: int, interval_seconds: float) -> None:
        self._db = db
        self._days = days
        self._interval = interval_seconds

    async def run(self) -> None:
        """Until cancelled; the first purge runs one interval after start-up."""
        while True:
            await anyio.sleep(self._interval)
            removed = await self.purge()
            if removed:
                logger.info("purged %d events older than %d days", removed, self._days)

    async def purge(self) -> int:
        """Remove every event past retention, batch by batch; how many."""
        total = 0
        while True:
            removed = await queries.purge(self._db, days=self._days, max_rows=PURGE_BATCH)
            if removed is None:  # another process is purging
                return total
            total += removed
            if removed < PURGE_BATCH:
                return total

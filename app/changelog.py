"""Keeping the change log in every process: numbering committed events, removing old ones.

Every service process runs a sequencer every `poll_seconds` (0.1 s); schema.sql's advisory
lock lets one number at a time, and any of them will do. Polling, not a NOTIFY from the
writers: a transaction that notifies holds a database-wide lock through its commit, which
halved write throughput (docs/performance.md "The change log"), while a poll that finds
nothing new costs one index probe. It numbers what any client committed, psql included.
Retention removes events older than INVENTORY_CHANGES_RETENTION_DAYS in batches, one process
at a time.
"""

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg_pool import PoolTimeout

from app.database import Database
from app.queries import changes

logger = logging.getLogger("app.changelog")

# Events numbered per call (one short transaction each).
NUMBER_BATCH = 5000
# When another process holds the sequencer's lock, its run may have begun before the commit
# that woke us: look again this soon, this many times, then leave it to the next wake-up.
BUSY_RETRY_SECONDS = 0.02
BUSY_RETRIES = 50
PURGE_BATCH = 10_000


class Sequencer:
    """Numbers committed events every `poll_seconds`; `on_numbered` runs after it numbered
    some."""

    def __init__(
        self, db: Database, *, poll_seconds: float, on_numbered: Callable[[], None]
    ) -> None:
        self._db = db
        self._poll = poll_seconds
        self._on_numbered = on_numbered

    async def run(self) -> None:
        """Until cancelled. Database failures are logged and retried at the next round."""
        failing = False
        while True:
            await asyncio.sleep(self._poll)
            try:
                numbered = await self.number()
            except (psycopg.Error, PoolTimeout) as exc:
                if not failing:
                    logger.warning("could not number new events (will retry): %s", exc)
                failing = True
                continue
            failing = False
            if numbered:
                self._on_numbered()

    async def number(self) -> int:
        """Number everything committed so far; how many this process numbered."""
        total = 0
        busy = 0
        while True:
            numbered = await changes.number(self._db, max_rows=NUMBER_BATCH)
            if numbered is None:
                busy += 1
                if busy > BUSY_RETRIES:
                    return total
                await asyncio.sleep(BUSY_RETRY_SECONDS)
                continue
            total += numbered
            if numbered < NUMBER_BATCH:
                return total


class Retention:
    """Removes events older than `days` every `interval_seconds`, in batches."""

    def __init__(self, db: Database, *, days: int, interval_seconds: float) -> None:
        self._db = db
        self._days = days
        self._interval = interval_seconds

    async def run(self) -> None:
        """Until cancelled; the first purge runs one interval after start-up."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                removed = await self.purge()
            except (psycopg.Error, PoolTimeout) as exc:
                logger.warning("could not purge old events (will retry): %s", exc)
                continue
            if removed:
                logger.info("purged %d events older than %d days", removed, self._days)

    async def purge(self) -> int:
        """Remove every event past retention, batch by batch; how many."""
        total = 0
        while True:
            removed = await changes.purge(self._db, days=self._days, max_rows=PURGE_BATCH)
            if removed is None:  # another process is purging
                return total
            total += removed
            if removed < PURGE_BATCH:
                return total

"""Reads that may go to a streaming replica (INVENTORY_READ_DATABASE_URL).

Exports, pages, GET /changes and reports ask `Reads` where to run. While the replica
answers, receives WAL from a primary and is at most `read_max_lag_seconds` behind (as its
probe last saw it, every `read_probe_seconds` per process), they run there. Otherwise they
run on the primary, and so does a read the replica fails before anything was sent (which
also marks the replica down until the next probe): a client never sees the replica's
failure, only the primary's answer a moment later. Lookups and everything a write returns
never come here: they read the primary (app.deps.DatabaseDep).

How far behind is measured against the primary, never from the replica alone (a replica
cut off from its primary has replayed all it received, and received nothing): each probe
reads the primary's WAL position first, then what the replica has replayed. The lag is the
time since the primary was last seen at a position the replica has reached: an upper
bound, exact to within a probe interval. A replica behind every position remembered, or
whose primary has not been read yet, is behind by an unknown amount: not used.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg_pool import PoolTimeout

from app.config import Settings
from app.core import health
from app.core.errors import DatabaseUnavailable
from app.database import Database, connection_options, open_database

logger = logging.getLogger("app.replica")

T = TypeVar("T")

# A replica that does not answer the probe within this is taken as down until the next one.
PROBE_TIMEOUT = 1.0
# A read waits at most this long for a replica connection before the primary serves it: a
# busy or unreachable replica costs a second at most, never the primary's full pool timeout.
REPLICA_POOL_TIMEOUT = 1.0
# What the replica may fail a read with and the primary still serve it: connection trouble
# (08, 53, 57: a stopped or restarting replica), recovery conflicts (40001), no connection
# in time. psycopg raises all of these as OperationalError or its subclasses.
FALLBACK = (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable)


class Replica:
    """The replica's pool and its state as the last probe saw it."""

    def __init__(
        self,
        db: Database,
        *,
        primary: str,
        options: dict[str, Any],
        max_lag: float,
        probe_seconds: float,
    ) -> None:
        self.db = db
        self.max_lag = max_lag
        self.probe_seconds = probe_seconds
        # None until the first probe answers, and whenever it does not.
        self.lag: float | None = None
        self.in_recovery = False
        self.state = "unknown"
        # The primary, read on a connection of the probe's own: a busy primary pool must not
        # starve the measurement (reads would then go to that busy primary).
        self._primary_dsn = primary
        self._primary_options = options
        self._primary: psycopg.AsyncConnection[Any] | None = None
        self._primary_failing = False
        # (when, primary WAL position) as the probes read them; positions only grow. The
        # same position read again only moves its time: the primary was still there then.
        self._positions: deque[tuple[float, int]] = deque()

    @property
    def usable(self) -> bool:
        return self.state == "in use"

    async def probe(self) -> None:
        """Read the primary's position, then the replica's state; set `state` and `lag`."""
        await self._read_primary()
        try:
            with anyio.fail_after(PROBE_TIMEOUT):
                replica = await health.replica_state(self.db)
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            if self.state != "down":
                logger.warning("read replica not answering; reads go to the primary: %s", exc)
            self.state, self.lag, self.in_recovery = "down", None, False
            return
        self.in_recovery = replica.in_recovery
        self.lag = None if replica.replayed is None else self._lag(replica.replayed)
        if not replica.in_recovery:
            # Promoted, or the URL names a primary: its data may have diverged from the
            # primary's, so it is never read as a replica.
            state = "not a replica"
        elif not replica.receiving:
            # Cut off from its primary (primary_conninfo wrong, network, primary down): it
            # may look caught up with what it received, and receive nothing more.
            state = "not streaming"
        elif self.lag is None or self.lag > self.max_lag:
            state = "lagging"
        else:
            state = "in use"
        if state != self.state and state != "in use":
            logger.warning("read replica %s (lag %s s); reads go to the primary", state, self.lag)
        elif state != self.state:
            logger.info("read replica in use (lag %.3f s)", self.lag)
        self.state = state

    async def _read_primary(self) -> None:
        try:
            with anyio.fail_after(PROBE_TIMEOUT):
                if self._primary is None or self._primary.closed:
                    self._primary = await psycopg.AsyncConnection.connect(
                        self._primary_dsn, **self._primary_options
                    )
                position = await health.primary_position(self._primary)
        except (psycopg.Error, TimeoutError) as exc:
            # No position this time: the replica's lag bound grows from the last one.
            if not self._primary_failing:
                logger.warning("cannot read the primary's WAL position: %s", exc)
            self._primary_failing = True
            await self._close_primary()
            return
        self._primary_failing = False
        now = time.monotonic()
        if self._positions and self._positions[-1][1] == position:
            self._positions[-1] = (now, position)
        else:
            self._positions.append((now, position))
        # Older positions only matter while they can tell a lag within the limit.
        keep = self.max_lag + 2 * self.probe_seconds + PROBE_TIMEOUT
        while len(self._positions) > 1 and now - self._positions[1][0] > keep:
            self._positions.popleft()

    def _lag(self, replayed: int) -> float | None:
        now = time.monotonic()
        for at, position in reversed(self._positions):
            if position <= replayed:
                return max(0.0, now - at)
        if self._positions and now - self._positions[0][0] > self.max_lag:
            return now - self._positions[0][0]  # at least this; past the limit either way
        return None

    async def _close_primary(self) -> None:
        if self._primary is not None:
            with anyio.CancelScope(shield=True):
                await self._primary.close()
            self._primary = None

    def failed(self, exc: BaseException) -> None:
        """A read failed on the replica: the primary serves reads until a probe says the
        replica answers again."""
        logger.warning("a read failed on the replica, served by the primary: %s", exc)
        self.state, self.lag, self.in_recovery = "down", None, False

    async def run(self) -> None:
        """Probe every `probe_seconds` until cancelled."""
        try:
            while True:
                await self.probe()
                await asyncio.sleep(self.probe_seconds)
        finally:
            await self._close_primary()


class Reads:
    """Where a read that may be stale by up to the lag limit runs: the replica or the primary."""

    def __init__(
        self,
        primary: Database,
        replica: Replica | None,
        count: Callable[[str], None] = lambda target: None,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self._count = count

    def targets(self) -> list[tuple[str, Database]]:
        """Where to try, in order: the replica first while it is usable, the primary last."""
        if self.replica is not None and self.replica.usable:
            return [("replica", self.replica.db), ("primary", self.primary)]
        return [("primary", self.primary)]

    def served(self, target: str) -> None:
        self._count(target)

    def failed(self, exc: BaseException) -> None:
        if self.replica is not None:
            self.replica.failed(exc)

    async def run(self, work: Callable[[Database], Awaitable[T]]) -> T:
        """`work(db)` on the replica, or on the primary when the replica cannot serve it.
        `work` must only read (it may run twice)."""
        *first, (last_name, last_db) = self.targets()
        for name, db in first:
            try:
                result = await work(db)
            except FALLBACK as exc:
                self.failed(exc)
                continue
            self.served(name)
            return result
        result = await work(last_db)
        self.served(last_name)
        return result


@asynccontextmanager
async def reading(
    primary: Database, primary_dsn: str, settings: Settings, count: Callable[[str], None]
) -> AsyncIterator[Reads]:
    """The process's Reads; with a replica configured, its pool is open meanwhile (run its
    probe, `Reads.replica.run`, for as long: it reads the primary's WAL position on a
    connection of its own to `primary_dsn`)."""
    if settings.read_database_url is None:
        yield Reads(primary, None, count)
        return
    own = settings.model_copy(update={"pool_timeout": REPLICA_POOL_TIMEOUT})
    # Not waited for: a replica that is down at start-up is only skipped.
    async with open_database(settings.read_database_url, own, wait=False) as db:
        replica = Replica(
            db,
            primary=primary_dsn,
            options=connection_options(settings),
            max_lag=settings.read_max_lag_seconds,
            probe_seconds=settings.read_probe_seconds,
        )
        yield Reads(primary, replica, count)

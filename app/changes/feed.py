"""The newest events of the change log, read once per wake-up and shared by every stream.

A stream that is caught up takes new events from here, so a commit costs this process one
query however many streams are open (and no stream holds a connection while it waits). A
stream behind the buffer (resuming from an old cursor) reads the database itself until it
catches up. The buffer holds a contiguous run of the newest events in seq order.
"""

import asyncio
import bisect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from app.changes import queries
from app.changes.queries import Event
from app.database import Database

# Events kept for streams that are a little behind; older cursors read the database.
BUFFER_EVENTS = 5000
# Events per read while catching up the buffer.
READ_BATCH = 1000


class Feed:
    """What open streams wait on: `since(cursor)`, `wait(timeout)`, `subscribed()`.

    `wake()` when events were numbered; `run` reads them (one read at a time, nothing while
    no stream is open). `close()` ends waits for good (shutdown).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._events: list[Event] = []
        # The last seq read into the buffer; None while nobody subscribes (nothing read).
        self._end: int | None = None
        self._grew = asyncio.Event()
        self._reading = asyncio.Lock()
        self._wanted = asyncio.Event()
        self.subscribers = 0
        self.closed = False

    @asynccontextmanager
    async def subscribed(self) -> AsyncIterator[None]:
        """Count an open stream; the first one starts the buffer, the last one drops it."""
        self.subscribers += 1
        try:
            if self._end is None:
                await self.refresh()
            yield
        finally:
            self.subscribers -= 1
            if self.subscribers == 0:
                self._events.clear()
                self._end = None

    def since(self, cursor: int) -> list[Event] | None:
        """The buffered events after `cursor`: [] when nothing newer is known, None when the
        cursor is older than the buffer (read the database)."""
        if self._end is None:
            return None
        if cursor >= self._end:
            return []
        first = self._events[0].seq if self._events else self._end + 1
        if cursor < first - 1:
            return None
        start = bisect.bisect_right(self._events, cursor, key=lambda e: e.seq)
        return self._events[start:]

    async def wait(self, seconds: float, *, or_until: anyio.Event | None = None) -> None:
        """Until the buffer grows, `close()`, `or_until` is set, or `seconds` pass."""
        if self.closed or (or_until is not None and or_until.is_set()):
            return
        grew = self._grew
        with anyio.move_on_after(seconds):
            if or_until is None:
                await grew.wait()
                return
            async with anyio.create_task_group() as race:

                async def first(event: asyncio.Event | anyio.Event) -> None:
                    await event.wait()
                    race.cancel_scope.cancel()

                race.start_soon(first, grew)
                race.start_soon(first, or_until)

    def wake(self) -> None:
        """Something was numbered (a NOTIFY, this process's sequencer, a reconnect)."""
        self._wanted.set()

    async def run(self, poll_seconds: float | None) -> None:
        """Read what was numbered whenever woken, and, with `poll_seconds` (no NOTIFY can
        reach this process), that often while streams are open; until cancelled."""
        while True:
            if self.subscribers:
                # First thing too: a wake-up may have come while a failed read was retried.
                await self.refresh()
            if poll_seconds is None:
                await self._wanted.wait()
            else:
                with anyio.move_on_after(poll_seconds):
                    await self._wanted.wait()
            self._wanted.clear()

    async def refresh(self) -> None:
        """Read the events numbered since the last read into the buffer; wake the waiters."""
        async with self._reading:
            if self._end is None:
                self._end = await queries.last_seq(self._db)
            read = False
            while True:
                page = await queries.page(self._db, after=self._end, limit=READ_BATCH)
                if page.expired(self._end):
                    # Retention passed the buffer (nobody read for a retention period):
                    # start over at the oldest event kept.
                    self._events.clear()
                    self._end = page.purged
                    continue
                if not page.events:
                    break
                self._events.extend(page.events)
                self._end = page.events[-1].seq
                read = True
                if len(page.events) < READ_BATCH:
                    break
            if len(self._events) > 2 * BUFFER_EVENTS:
                del self._events[:-BUFFER_EVENTS]
        if read:
            self._notify()

    def close(self) -> None:
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        grew, self._grew = self._grew, asyncio.Event()
        grew.set()

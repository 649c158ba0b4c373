"""GET /changes/stream's body: every event after a cursor, then each new one as it comes."""

from collections import Counter
from collections.abc import AsyncIterator, Callable

import anyio
from prometheus_client import Gauge
from sse_starlette import ServerSentEvent

from app.changes import queries
from app.changes.feed import Feed
from app.core.errors import ServerBusy
from app.database import Database

# Events per database read while a stream catches up from an old cursor.
STREAM_BATCH = 500
# How long a client waits before reconnecting after the stream ends (the SSE `retry:`).
RECONNECT_MS = 1000


class StreamShares:
    """At most `per_credential` open streams per token in this process.

    A stream holds no database connection, but it holds a socket, a task and a place in
    the feed: without a bound, one token opened 400 of them. Per process, as the bulk
    slots are: with N instances a token may hold N times as many.
    """

    def __init__(self, per_credential: int) -> None:
        self.per_credential = per_credential
        self._open: Counter[str] = Counter()

    def take(self, credential: str) -> Callable[[], None]:
        """A share for one stream, or ServerBusy (503); call what it returns, once or more,
        when the stream ends."""
        if self._open[credential] >= self.per_credential:
            raise ServerBusy(
                f"This token has {self.per_credential} change streams open here, the most it "
                "may. Close one, or retry later."
            )
        self._open[credential] += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._open[credential] -= 1
                if not self._open[credential]:
                    del self._open[credential]

        return release


async def events(
    db: Database,
    feed: Feed,
    first: list[queries.Event],
    cursor: int,
    *,
    open_streams: Gauge,
    wait_seconds: float,
    stopping: anyio.Event,
    release: Callable[[], None],
) -> AsyncIterator[ServerSentEvent]:
    """Every event after `cursor`, then each new one as it is numbered, until the client
    leaves or the server stops. `first` is the first page, already read; `release` hands
    the stream's share back when it ends."""
    open_streams.inc()
    try:
        # Out at once: the client (and any proxy) sees the stream is up.
        yield ServerSentEvent(comment="change log stream", retry=RECONNECT_MS)
        async with feed.subscribed():
            batch: list[queries.Event] | None = first
            while not (feed.closed or stopping.is_set()):
                if batch is None:
                    page = await queries.page(db, after=cursor, limit=STREAM_BATCH)
                    if page.expired(cursor):
                        return  # fell behind the retention: a reconnect gets the 410
                    batch = page.events
                for event in batch:
                    yield ServerSentEvent(data=event.json, event=event.type, id=str(event.seq))
                    cursor = event.seq
                # What the feed knows now, before waiting: it may have read new events
                # while this stream was busy (or subscribing).
                batch = feed.since(cursor)
                if batch == []:
                    await feed.wait(wait_seconds, or_until=stopping)
                    batch = feed.since(cursor)
    finally:
        open_streams.dec()
        release()

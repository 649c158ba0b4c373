"""GET /changes/stream's body: every event after a cursor, then each new one as it comes."""

from collections.abc import AsyncIterator

import anyio
from prometheus_client import Gauge
from sse_starlette import ServerSentEvent

from app.changes import queries
from app.changes.feed import Feed
from app.database import Database

# Events per database read while a stream catches up from an old cursor.
STREAM_BATCH = 500
# How long a client waits before reconnecting after the stream ends (the SSE `retry:`).
RECONNECT_MS = 1000


async def events(
    db: Database,
    feed: Feed,
    first: list[queries.Event],
    cursor: int,
    *,
    open_streams: Gauge,
    wait_seconds: float,
    stopping: anyio.Event,
) -> AsyncIterator[ServerSentEvent]:
    """Every event after `cursor`, then each new one as it is numbered, until the client
    leaves or the server stops. `first` is the first page, already read."""
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

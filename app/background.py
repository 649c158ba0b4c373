"""The change log's work in every service process, started and stopped with it.

Per process: one LISTEN connection (app.listener), a sequencer and retention
(app.changelog), the streams' shared feed (app.feed) and the webhook deliverer
(app.delivery). They run on a small pool of their own, so they never wait behind requests
and requests never wait behind them: per process that is `pool_size` + 2 connections, and
one more for LISTEN. How they wake each other:

    every changes_poll_seconds --> sequencer numbers what committed since (one process at a time)
    numbered (NOTIFY from any process's sequencer, or this one's) --> feed, deliverer
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

from app.changelog import Retention, Sequencer
from app.config import Settings
from app.database import open_database
from app.delivery import Deliverer
from app.feed import Feed
from app.listener import Listener
from app.observability import Metrics

logger = logging.getLogger("app.background")

# Connections of the background work's own pool, per process.
CONNECTIONS = 2
RECANCEL_SECONDS = 0.5


@asynccontextmanager
async def running(dsn: str, settings: Settings, metrics: Metrics) -> AsyncIterator[Feed]:
    """Run the background work while the block runs; yields the feed streams wait on.

    On exit the streams are told to end, then everything is cancelled: a webhook attempt
    in flight gets a moment to finish, or is handed back to the queue.
    """
    own = settings.model_copy(update={"pool_size": CONNECTIONS})
    # Not waited for: start-up waits for the requests' pool only, and every task here
    # retries until its pool has connected.
    async with open_database(dsn, own, wait=False) as upkeep:
        feed = Feed(upkeep)
        deliverer = Deliverer(
            upkeep, settings, count=metrics.count_delivery, backlog=metrics.set_backlog
        )

        def numbered() -> None:
            feed.wake()
            deliverer.wake()

        sequencer = Sequencer(
            upkeep, poll_seconds=settings.changes_poll_seconds, on_numbered=numbered
        )
        listen_dsn: str | None = settings.listen_database_url or dsn
        if settings.pgbouncer and settings.listen_database_url is None:
            # LISTEN through transaction pooling would subscribe a server connection that
            # PgBouncer then lends to other clients. Without it, streams and webhooks still
            # wake within changes_poll_seconds: every process polls (app.changelog, app.feed).
            logger.warning(
                "INVENTORY_PGBOUNCER=1 without INVENTORY_LISTEN_DATABASE_URL: no LISTEN; "
                "streams and webhooks wake on the %.1f s poll",
                settings.changes_poll_seconds,
            )
            listen_dsn = None
        listener = Listener(listen_dsn, on_numbered=numbered)
        retention = Retention(
            upkeep,
            days=settings.changes_retention_days,
            interval_seconds=settings.changes_purge_interval_seconds,
        )
        async with _tasks(
            listener.run(),
            sequencer.run(),
            retention.run(),
            feed.run(settings.changes_poll_seconds),
            deliverer.run(),
        ):
            try:
                yield feed
            finally:
                feed.close()


@asynccontextmanager
async def _tasks(*work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `work` as tasks while the block runs; cancel and await them on exit."""
    tasks = [asyncio.create_task(w) for w in work]
    try:
        yield
    finally:
        for task in tasks:
            # Cancelled again until it ends: a library may swallow one cancellation (a
            # pool that hands over a connection at the moment its waiter is cancelled).
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
            with suppress(asyncio.CancelledError):
                await task

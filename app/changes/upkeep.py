"""The change log's background work in every service process, started by the supervisor.

    sequencer role (one process)  --numbers every changes_poll_seconds--> NOTIFY product_changes
    LISTEN (every process)        --numbered--> wake(): the streams' feed, webhook deliveries
    retention (every process, one at a time)  --every changes_purge_interval_seconds

Nothing here polls on a process that does not hold the sequencer role: an idle service
costs the database one small query per poll, from one process.
"""

import logging
from collections.abc import Callable

from app.changes.feed import Feed
from app.changes.listener import Listener
from app.changes.sequencer import Retention, Sequencer
from app.config import Settings
from app.core.tasks import Supervisor
from app.database import Database

logger = logging.getLogger("app.changes")


def direct_url(dsn: str, settings: Settings) -> str | None:
    """Where this process takes sessions (LISTEN, the sequencer role): a direct connection,
    None behind PgBouncer when no direct URL is given."""
    if settings.listen_database_url is not None:
        return settings.listen_database_url
    return None if settings.pgbouncer else dsn


def start(
    supervisor: Supervisor,
    db: Database,
    dsn: str,
    settings: Settings,
    *,
    feed: Feed,
    wake: Callable[[], None],
) -> None:
    """Run the change log's loops under `supervisor`, on the background pool `db`; `wake`
    runs whenever events were numbered (by any process)."""
    direct = direct_url(dsn, settings)
    if direct is None:
        # LISTEN through transaction pooling would subscribe a server connection that
        # PgBouncer then lends to other clients.
        logger.warning(
            "INVENTORY_PGBOUNCER=1 without INVENTORY_LISTEN_DATABASE_URL: no LISTEN; every "
            "process looks for new events every %.1f s",
            settings.changes_poll_seconds,
        )
    poll = settings.changes_poll_seconds
    sequencer = Sequencer(direct, db, poll_seconds=poll, on_numbered=wake)
    retention = Retention(
        db,
        days=settings.changes_retention_days,
        interval_seconds=settings.changes_purge_interval_seconds,
    )
    supervisor.start("change log listener", Listener(direct, on_numbered=wake).run)
    supervisor.start("change log sequencer", sequencer.run)
    supervisor.start("change log retention", retention.run)
    supervisor.start("change streams feed", lambda: feed.run(poll if direct is None else None))

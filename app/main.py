"""The ASGI application: `uvicorn app.main:app`."""

import gc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline

from app import routes
from app.changes import upkeep as changes_upkeep
from app.changes.feed import Feed
from app.changes.stream import StreamShares
from app.config import Settings
from app.core import errors, openapi, tasks
from app.core import reads as replica
from app.core.access import Access, LoopbackOnly, TokenCheck
from app.core.http.head import HeadAsGet
from app.core.http.limits import BodyGuard, SendDeadline
from app.core.observability import REQUEST_ID_KEY, Metrics, ObserveRequests, configure_logging
from app.core.recent import Recent
from app.database import open_database
from app.embedded import start_embedded
from app.idempotency.runner import Idempotency
from app.products.queries import Creates, Lookups
from app.reports.queries import StockSummary
from app.reports.router import STOCK_REPORT_SECONDS
from app.reservations.expiry import Expiry
from app.webhooks import ssrf
from app.webhooks.delivery import Deliveries


def create_app(settings: Settings | None = None, *, background: bool = True) -> FastAPI:
    """Build the app; nothing is opened until its lifespan starts.

    `background=False` makes an app that only answers requests: none of the background
    loops runs (change log numbering and LISTEN, change streams' feed, webhook deliveries,
    retention and idempotency-key purges, the replica probe), and their pool is not opened.
    The tests use it for everything that is about requests; the tests of the loops start
    them. Every service process runs them.

    Raises access.TokenConfigError for a token variable that is set but holds no token.
    """
    settings = settings or Settings()
    configure_logging(settings.log_level)
    access = Access.from_settings(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        access.refuse_exposed_sockets()
        dsn = settings.database_url or await start_embedded(settings.data_dir)
        async with AsyncExitStack() as stack:
            database = await stack.enter_async_context(open_database(dsn, settings))
            # The background work's own small pool: it never waits behind requests, and
            # requests never wait behind it. Not waited for: every loop retries until it
            # has connected.
            upkeep = (
                await stack.enter_async_context(
                    open_database(dsn, settings.model_copy(update={"pool_size": 2}), wait=False)
                )
                if background
                else database
            )
            # Exports, pages, GET /changes and reports: a replica when one is usable.
            reads = await stack.enter_async_context(
                replica.reading(database, dsn, settings, metrics.count_read)
            )
            # Innermost: every background loop has stopped before the pools close.
            supervisor = await stack.enter_async_context(tasks.supervising())
            idempotency = Idempotency(
                database,
                ttl_seconds=settings.idempotency_ttl_seconds,
                wait_seconds=settings.idempotency_wait_seconds,
            )
            feed = Feed(upkeep)
            deliveries = Deliveries(
                upkeep, settings, count=metrics.count_delivery, backlog=metrics.set_backlog
            )

            def numbered() -> None:
                feed.wake()
                deliveries.wake()

            if background:
                supervisor.start(
                    "idempotency key purge",
                    lambda: idempotency.purge_every(settings.idempotency_purge_interval_seconds),
                )
                if reads.replica is not None:
                    supervisor.start("read replica probe", reads.replica.run)
                changes_upkeep.start(supervisor, upkeep, dsn, settings, feed=feed, wake=numbered)
                supervisor.start("webhook deliveries", deliveries.run)
                supervisor.start("reservation expiry", Expiry(upkeep).run)
            metrics.pool.pool = database.pool
            metrics.replica.replica = reads.replica
            # POST /webhooks looks its URL's host up here (app.webhooks.ssrf).
            resolver = await stack.enter_async_context(ssrf.resolving())
            try:
                # What app.deps hands to handlers; nothing else reads this state.
                yield {
                    "resolver": resolver,
                    # GET /reports/stock scans every product: computed at most once a
                    # second per process, however many ask.
                    "stock_report": Recent[StockSummary](STOCK_REPORT_SECONDS),
                    "database": database,
                    "lookups": Lookups(database),
                    "creates": Creates(database),
                    "idempotency": idempotency,
                    "settings": settings,
                    "access": access,
                    "metrics": metrics,
                    "feed": feed,
                    "stream_shares": StreamShares(settings.streams_per_credential),
                    "reads": reads,
                }
            finally:
                # Open streams end their bodies now, before their loops are cancelled.
                feed.close()
                metrics.pool.pool = None
                metrics.replica.replica = None

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from files bundled in the
    # package, served under /static-offline-docs; no CDN, so the docs work offline.
    app = FastAPIOffline(
        title="Inventory API",
        version="2.0.0",
        description="Products and stock, with the rules kept by PostgreSQL.",
        lifespan=lifespan,
        # Swagger UI would otherwise send the document to an online validator.
        swagger_ui_parameters={"validatorUrl": None},
    )
    errors.install(
        app,
        retry_after=settings.retry_after_seconds,
        request_id=_request_id,
        count_database_error=lambda label: metrics.db_errors.labels(label).inc(),
    )
    routes.install(app, tokens=not access.open)
    openapi.install(
        app, secured=not access.open, loopback_only=access.open and not access.allow_open
    )
    # Added first = innermost. BodyGuard answers 408/413/415 before the app reads a body;
    # TokenCheck, before it, answers 401/403 before any body byte is read; LoopbackOnly
    # refuses an open API's requests from the network;
    # HeadAsGet answers HEAD as GET; SendDeadline bounds every response write;
    # ObserveRequests, outermost, ids, counts and logs every answer, those included.
    app.add_middleware(
        BodyGuard,
        json_max_bytes=settings.json_max_bytes,
        import_max_bytes=settings.import_max_bytes,
        timeout=settings.body_timeout_seconds,
        retry_after=settings.retry_after_seconds,
        unauthenticated_bodies=settings.unauthenticated_bodies,
        min_rate=settings.bulk_min_bytes_per_second,
        grace=settings.bulk_grace_seconds,
        routes=app.router.routes,
    )
    if not access.open:
        app.add_middleware(TokenCheck, access=access, retry_after=settings.retry_after_seconds)
    if access.open and not access.allow_open:
        app.add_middleware(LoopbackOnly, retry_after=settings.retry_after_seconds)
    app.add_middleware(HeadAsGet)
    app.add_middleware(
        SendDeadline,
        timeout=settings.send_timeout_seconds,
        min_rate=settings.bulk_min_bytes_per_second,
        grace=settings.bulk_grace_seconds,
    )
    app.add_middleware(ObserveRequests, metrics=metrics, routes=app.router.routes)
    return app


def _request_id(request: Request) -> str | None:
    value = request.scope.get(REQUEST_ID_KEY)
    return None if value is None else str(value)


app = create_app()
# What importing the service made (modules, routes, models, compiled statements) lives as
# long as the process. Frozen, the collector's full passes no longer walk it; each such
# pass stalled every request of the worker for the time it took (docs/performance.md).
gc.collect()
gc.freeze()

"""The ASGI application: `uvicorn app.main:app`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import access, errors, openapi
from app.config import Settings
from app.db import open_database
from app.embedded import start_embedded
from app.idempotency import Idempotency
from app.limits import BodyGuard
from app.observability import Metrics, ObserveRequests, configure_logging
from app.routes import bench, router
from app.streaming import BulkSlots

logger = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing is opened until its lifespan starts."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        access.warn_if_open(app)
        dsn = settings.database_url or await start_embedded(settings.data_dir)
        async with open_database(dsn, settings) as database:
            idempotency = Idempotency(
                database.pool,
                ttl_seconds=settings.idempotency_ttl_seconds,
                wait_seconds=settings.idempotency_wait_seconds,
                attempts=settings.conflict_attempts,
                retry_after=settings.retry_after_seconds,
            )
            metrics.pool.pool = database.pool
            # Expired Idempotency-Keys are deleted in the background; cancelled on shutdown.
            async with idempotency.purging(settings.idempotency_purge_interval_seconds):
                yield {
                    "database": database,
                    "idempotency": idempotency,
                    "bulk": _bulk_slots(settings),
                    "settings": settings,
                }
            metrics.pool.pool = None

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from files bundled in the
    # package, served under /static-offline-docs; no CDN, so the docs work offline.
    app = FastAPIOffline(
        title="Inventory API",
        version="1.0.0",
        description="Products and stock, with the rules kept by PostgreSQL.",
        lifespan=lifespan,
        # Swagger UI would otherwise send the document to an online validator.
        swagger_ui_parameters={"validatorUrl": None},
    )
    errors.install(app, retry_after=settings.retry_after_seconds)
    app.include_router(router)
    # The ceiling goes through the same middleware as every route (bench/ compares them).
    if settings.bench_ceiling:
        app.include_router(bench.router)
    # Production readiness (README "Security", "Metrics", "Logs"): tokens, metrics, body limits.
    access.install(app, settings)
    app.state.metrics = metrics
    openapi.install(app)
    # Added last = outermost: ObserveRequests sees (and ids, counts, logs) every answer,
    # including the 413/415/422 BodyGuard gives before the app reads a body.
    app.add_middleware(
        BodyGuard,
        json_max_bytes=settings.json_max_bytes,
        import_max_bytes=settings.import_max_bytes,
    )
    app.add_middleware(ObserveRequests, metrics=metrics, routes=app.router.routes)
    return app


def _bulk_slots(settings: Settings) -> BulkSlots:
    # One connection always stays for everything else (with pool_size 1 there is none to spare).
    slots = max(1, min(settings.bulk_connections, settings.pool_size - 1))
    return BulkSlots(slots, timeout=settings.pool_timeout, retry_after=settings.retry_after_seconds)


app = create_app()

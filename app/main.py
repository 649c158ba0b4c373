"""The ASGI application: `uvicorn app.main:app`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import errors
from app.config import Settings
from app.db import open_database
from app.embedded import start_embedded
from app.idempotency import Idempotency
from app.routes import router

logger = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing is opened until its lifespan starts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        dsn = settings.database_url or await start_embedded(settings.data_dir)
        async with open_database(dsn, settings) as database:
            idempotency = Idempotency(
                database.pool,
                ttl_seconds=settings.idempotency_ttl_seconds,
                wait_seconds=settings.idempotency_wait_seconds,
                attempts=settings.conflict_attempts,
                retry_after=settings.retry_after_seconds,
            )
            # Expired Idempotency-Keys are deleted in the background; cancelled on shutdown.
            async with idempotency.purging(settings.idempotency_purge_interval_seconds):
                yield {"database": database, "idempotency": idempotency}

    app = FastAPI(
        title="Inventory API",
        version="1.0.0",
        description="Products and stock, with the rules kept by PostgreSQL.",
        lifespan=lifespan,
    )
    errors.install(app, retry_after=settings.retry_after_seconds)
    app.include_router(router)
    return app


app = create_app()

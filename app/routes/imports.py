"""/products/import: bulk add from a CSV or NDJSON file, all or nothing."""

import tempfile
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from psycopg import AsyncConnection

from app import importer
from app.config import Settings
from app.db import DatabaseDep
from app.errors import ApiError
from app.idempotency import IdempotencyDep, IdempotencyKeyHeader, request_hash
from app.routes.docs import problems
from app.streaming import BulkSlots

router = APIRouter(prefix="/products", tags=["products"], responses=problems(503))

_MEDIA_TYPES = {importer.CSV, importer.NDJSON}
_CHARSETS = {None, "utf-8", "utf8", "us-ascii"}
SPOOL_MEMORY = 1024 * 1024


def _media_type(content_type: str | None) -> str:
    """The body's format from Content-Type; raises ApiError 415 unless we read it."""
    media, *params = (p.strip().lower() for p in (content_type or "").split(";"))
    charset = next(
        (p.split("=", 1)[1].strip('"') for p in params if p.startswith("charset=")), None
    )
    if media not in _MEDIA_TYPES or charset not in _CHARSETS:
        raise ApiError(
            415,
            "unsupported_media_type",
            "Import bodies are text/csv or application/x-ndjson, in UTF-8.",
        )
    return media


@router.post(
    "/import",
    status_code=201,
    responses=problems(409, 413, 415, 422),
    summary="Add many products from CSV or NDJSON: all or nothing",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                importer.CSV: {"schema": {"type": "string"}},
                importer.NDJSON: {"schema": {"type": "string"}},
            },
        }
    },
)
async def import_products(
    request: Request,
    database: DatabaseDep,
    idempotency: IdempotencyDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    media_type = _media_type(request.headers.get("content-type"))
    settings: Settings = request.state.settings
    limit = settings.import_max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            "payload_too_large",
            f"An import body may hold at most {limit} bytes.",
            max_bytes=limit,
        )
    bulk: BulkSlots = request.state.bulk
    async with bulk.hold():
        if idempotency_key is None:
            # Nothing to replay: the body goes from the socket straight into COPY.
            async with database.pool.connection() as conn:
                created = await importer.import_products(
                    conn, request.stream(), media_type=media_type, max_bytes=limit
                )
            return _created(created)
        # Under a key the body's hash must be known before the work starts, and the work
        # may be retried (serialization failures): the body is spooled first, to memory up
        # to SPOOL_MEMORY and to a temporary file past it, never held whole in memory.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spooled:
            digest = await importer.spool(request.stream(), spooled, max_bytes=limit)

            async def operation(conn: AsyncConnection[Any]) -> Response:
                created = await importer.import_products(
                    conn, importer.unspool(spooled), media_type=media_type, max_bytes=limit
                )
                return _created(created)

            return await idempotency.run(
                operation,
                scope="POST /products/import",
                key=idempotency_key,
                request_hash=request_hash(media_type, digest),
            )


def _created(count: int) -> Response:
    return JSONResponse({"created": count}, status_code=201)

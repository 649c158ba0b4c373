"""/products/import: bulk add from a CSV or NDJSON file, all or nothing."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import importer
from app.config import Settings
from app.db import DatabaseDep
from app.errors import ApiError
from app.routes.docs import problems
from app.streaming import BulkSlots

router = APIRouter(prefix="/products", tags=["products"], responses=problems(503))

_MEDIA_TYPES = {importer.CSV, importer.NDJSON}
_CHARSETS = {None, "utf-8", "utf8", "us-ascii"}


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
async def import_products(request: Request, database: DatabaseDep) -> JSONResponse:
    # Seam for Idempotency-Key (API.md): wrap this body once app/idempotency.py exists.
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
        created = await importer.import_products(
            database.pool, request.stream(), media_type=media_type, max_bytes=limit
        )
    return JSONResponse({"created": created}, status_code=201)

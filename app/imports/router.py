"""/products/import: bulk add from a CSV or NDJSON file, all or nothing."""

import tempfile
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from app.core.errors import UnsupportedMediaType
from app.core.openapi import problems
from app.database import Connection
from app.deps import Credential, DatabaseDep, IdempotencyDep, IdempotencyKey
from app.imports import parsing
from app.imports import queries as imports
from app.imports.schemas import ImportResult
from app.imports.staging import OnConflict

router = APIRouter(prefix="/products", tags=["products"], responses=problems(503))

_MEDIA_TYPES = {parsing.CSV, parsing.NDJSON}
_CHARSETS = {None, "utf-8", "utf8", "us-ascii"}


def _media_type(content_type: str | None) -> str:
    """The body's format from Content-Type; raises UnsupportedMediaType unless we read it."""
    media, *params = (p.strip().lower() for p in (content_type or "").split(";"))
    charset = next(
        (p.split("=", 1)[1].strip('"') for p in params if p.startswith("charset=")), None
    )
    if media not in _MEDIA_TYPES or charset not in _CHARSETS:
        raise UnsupportedMediaType("Import bodies are text/csv or application/x-ndjson, in UTF-8.")
    return media


@router.post(
    "/import",
    operation_id="importProducts",
    status_code=201,
    response_model=ImportResult,
    responses=problems(409, 413, 415, 422),
    summary="Add or update many products from CSV or NDJSON: all or nothing",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                # binary: generators then give the method a file or bytes parameter,
                # and the server streams it all the same.
                parsing.CSV: {"schema": {"type": "string", "format": "binary"}},
                parsing.NDJSON: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def import_products(
    request: Request,
    db: DatabaseDep,
    idempotency: IdempotencyDep,
    credential: Credential,
    on_conflict: Annotated[
        OnConflict,
        Query(
            description="Records whose SKU exists: `error` (409), `skip` them, or `update` "
            "the products (with `quantity`: a stock count, recorded as corrections)"
        ),
    ] = "error",
    idempotency_key: IdempotencyKey = None,
) -> Response:
    media_type = _media_type(request.headers.get("content-type"))

    async def into(conn: Connection, body: AsyncIterator[bytes]) -> Response:
        done = await imports.import_products(
            conn, body, media_type=media_type, on_conflict=on_conflict
        )
        return JSONResponse(done._asdict(), status_code=201)

    if idempotency_key is None:
        # Nothing to replay: the body goes from the socket straight into COPY, once.
        return await db.write(
            lambda conn: into(conn, request.stream()),
            bulk=True,
            replayable=False,
            credential=credential,
        )
    # Under a key the body's hash must be known before the work starts, and the work may
    # be retried (serialization failures): the body is spooled first, never held whole.
    with tempfile.SpooledTemporaryFile(max_size=parsing.SPOOL_MEMORY) as spooled:
        digest = await parsing.spool(request.stream(), spooled)
        return await idempotency.run(
            lambda conn: into(conn, parsing.unspool(spooled)),
            key=idempotency_key,
            credential=credential,
            scope="POST /products/import",
            # on_conflict is part of the request; left out for the default, so that keys
            # stored before the parameter existed still replay.
            request=(media_type, digest)
            if on_conflict == "error"
            else (media_type, on_conflict, digest),
            bulk=True,
        )

"""/products/{sku}/adjustments and /movements: stock changes and their ledger."""

from typing import Any

from fastapi import APIRouter, Request, Response
from psycopg import AsyncConnection

from app import changes
from app.db import DatabaseDep
from app.errors import product_not_found
from app.idempotency import IdempotencyDep, IdempotencyKeyHeader, canonical_json, request_hash
from app.pagination import After, Limit, decode_cursor, encode_cursor, next_link
from app.routes.docs import problems
from app.schemas import AdjustmentCreate, MovementRead, ProductRead, could_be_sku
from app.streaming import JsonArrayStream

router = APIRouter(prefix="/products", tags=["stock"], responses=problems(503))


@router.post(
    "/{sku}/adjustments",
    response_model=ProductRead,
    responses=problems(404, 409, 422),
    summary="Add or remove stock; records a movement (never below zero)",
)
async def adjust_stock(
    sku: str,
    body: AdjustmentCreate,
    idempotency: IdempotencyDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    if not could_be_sku(sku):
        raise product_not_found(sku)

    async def operation(conn: AsyncConnection[Any]) -> Response:
        product = await changes.adjust_stock(conn, sku=sku, adjustment=body)
        return Response(product.json, headers={"ETag": product.etag}, media_type="application/json")

    # The key names one adjustment of one product: the SKU (any case) is part of the request,
    # so the same key sent for another product is a reuse (422), not a second operation.
    return await idempotency.run(
        operation,
        scope="POST /products/{sku}/adjustments",
        key=idempotency_key,
        request_hash=request_hash(sku.lower(), canonical_json(body)),
    )


@router.get(
    "/{sku}/movements",
    response_model=list[MovementRead],
    responses=problems(404, 422),
    summary="The product's stock movements, oldest first",
)
async def list_movements(
    sku: str, request: Request, database: DatabaseDep, limit: Limit = None, after: After = None
) -> Response:
    start = decode_cursor(after, int)[0] if after is not None else 0
    if not could_be_sku(sku):
        raise product_not_found(sku)
    if limit is None:
        # Everything, streamed; the product is looked up first so that a missing one is 404.
        async with database.pool.connection() as conn:
            product_id = await changes.product_id(conn, sku=sku)
        if product_id is None:
            raise product_not_found(sku)
        return JsonArrayStream(database.pool, changes.MOVEMENTS, (product_id, start))
    async with database.pool.connection() as conn:
        page = await changes.movements_page(conn, sku=sku, after=start, limit=limit)
    if page is None:
        raise product_not_found(sku)
    rows, last = page
    headers = {} if last is None else {"Link": next_link(request, encode_cursor(last))}
    return Response("[" + ",".join(rows) + "]", headers=headers, media_type="application/json")

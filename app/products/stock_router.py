"""/products/{sku}/adjustments and /movements: stock changes and their ledger."""

from fastapi import APIRouter, Request, Response

from app.core.errors import ProductNotFound
from app.core.http.limits import JsonRoute
from app.core.http.pagination import (
    After,
    Limit,
    decode_cursor,
    encode_cursor,
    page_response,
)
from app.core.http.streaming import JsonArrayStream
from app.core.openapi import problems
from app.database import Connection
from app.deps import (
    Credential,
    DatabaseDep,
    IdempotencyDep,
    IdempotencyKey,
    LocationFilter,
    ProductSku,
)
from app.products import stock_queries as stock
from app.products.schemas import AdjustmentCreate, MovementRead, ProductRead

router = APIRouter(
    prefix="/products", tags=["stock"], responses=problems(503), route_class=JsonRoute
)


@router.post(
    "/{sku}/adjustments",
    operation_id="adjustStock",
    response_model=ProductRead,
    responses=problems(404, 409, 422),
    summary="Add or remove stock; records a movement (never below zero)",
)
async def adjust_stock(
    sku: ProductSku,
    body: AdjustmentCreate,
    idempotency: IdempotencyDep,
    credential: Credential,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    async def operation(conn: Connection) -> Response:
        product = await stock.adjust_stock(conn, sku=sku, adjustment=body)
        return Response(product.json, headers={"ETag": product.etag}, media_type="application/json")

    # The key names one adjustment of one product: the SKU (any case) is part of the request,
    # so the same key sent for another product is a reuse (422), not a second operation.
    return await idempotency.run(
        operation,
        key=idempotency_key,
        credential=credential,
        scope="POST /products/{sku}/adjustments",
        request=(sku.lower(), body),
    )


@router.get(
    "/{sku}/movements",
    operation_id="listMovements",
    response_model=list[MovementRead],
    responses=problems(404, 422),
    summary="The product's stock movements, oldest first",
)
async def list_movements(
    sku: ProductSku,
    request: Request,
    db: DatabaseDep,
    limit: Limit = None,
    after: After = None,
    location: LocationFilter = None,
) -> Response:
    start = decode_cursor(after, int)[0] if after is not None else 0
    if limit is None:
        # Everything, streamed in a bulk slot; looked up first so that a missing one is 404.
        product = await stock.product_id(db, sku=sku)
        if product is None:
            raise ProductNotFound(sku)
        return JsonArrayStream(
            db, stock.all_movements(product=product, after=start, location=location)
        )
    page = await stock.movements_page(db, sku=sku, after=start, limit=limit, location=location)
    if page is None:
        raise ProductNotFound(sku)
    rows, last = page
    return page_response(request, rows, None if last is None else encode_cursor(last))

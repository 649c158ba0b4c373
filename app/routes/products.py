"""/products: add, list, look up, change and delete products."""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from psycopg import AsyncConnection

from app import changes, etags, listing, queries
from app.db import DatabaseDep
from app.errors import ApiError, product_not_found
from app.idempotency import IdempotencyDep, IdempotencyKeyHeader, canonical_json, request_hash
from app.listing import Format, negotiate
from app.pagination import After, Limit
from app.routes.docs import problems
from app.schemas import ProductCreate, ProductRead, ProductUpdate, could_be_sku
from app.streaming import BulkSlots

router = APIRouter(prefix="/products", tags=["products"], responses=problems(503))

IfNoneMatch = Annotated[
    str | None, Header(alias="If-None-Match", description="ETags you hold: 304 if current")
]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", description="Change only if the product still has this ETag"),
]


def _json(text: str, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status_code=status_code, headers=headers, media_type="application/json")


@router.post(
    "",
    status_code=201,
    response_model=ProductRead,
    responses=problems(409, 422),
    summary="Add a product",
)
async def create_product(
    body: ProductCreate, idempotency: IdempotencyDep, idempotency_key: IdempotencyKeyHeader = None
) -> Response:
    async def operation(conn: AsyncConnection[Any]) -> Response:
        product = await queries.create_product(conn, new=body)
        return _json(product.json, 201, {"Location": f"/products/{body.sku}", "ETag": product.etag})

    return await idempotency.run(
        operation,
        scope="POST /products",
        key=idempotency_key,
        request_hash=request_hash(canonical_json(body)),
    )


_LIST_PARAMETERS = {"limit", "after", "sku_prefix"}


@router.get(
    "",
    response_model=list[ProductRead],
    responses={
        **problems(406, 422),
        200: {"content": {f.value: {} for f in Format if f is not Format.JSON}},
    },
    summary="List products oldest first: everything (streamed) or one page; JSON, CSV, NDJSON",
)
async def list_products(
    request: Request,
    database: DatabaseDep,
    limit: Limit = None,
    after: After = None,
    sku_prefix: Annotated[
        str | None, Query(max_length=64, description="Only SKUs starting with this, any case")
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    # A misspelt parameter (`?limt=10`) must not silently turn a page into a full export.
    unknown = sorted(set(request.query_params) - _LIST_PARAMETERS)
    if unknown:
        raise ApiError(
            422,
            "validation_failed",
            "Unknown query parameter.",
            errors=[{"field": name, "message": "is not a known parameter"} for name in unknown],
        )
    fmt = negotiate(accept)
    bulk: BulkSlots = request.state.bulk
    return await listing.respond(
        database.pool, bulk, request, fmt=fmt, limit=limit, after=after, sku_prefix=sku_prefix
    )


@router.get(
    "/{sku}",
    response_model=ProductRead,
    responses={**problems(404), 304: {"description": "Not modified: your ETag is current"}},
    summary="Look up one product by SKU, ignoring case",
)
async def get_product(
    sku: str, database: DatabaseDep, if_none_match: IfNoneMatch = None
) -> Response:
    # A string that cannot be a SKU names no product; no need to ask the database.
    product = await queries.get_product(database.pool, sku=sku) if could_be_sku(sku) else None
    if product is None:
        raise product_not_found(sku)
    if etags.none_match(if_none_match, product.etag):
        return Response(status_code=304, headers={"ETag": product.etag})
    return _json(product.json, headers={"ETag": product.etag})


# --- Changing and deleting (optimistic concurrency with If-Match) ------------------------


@router.patch(
    "/{sku}",
    response_model=ProductRead,
    responses=problems(404, 412, 422),
    summary="Change name, description or price (JSON merge patch)",
)
async def patch_product(
    sku: str, body: ProductUpdate, idempotency: IdempotencyDep, if_match: IfMatch = None
) -> Response:
    if not could_be_sku(sku):
        raise product_not_found(sku)
    accepted = etags.if_match_tags(if_match)

    async def operation(conn: AsyncConnection[Any]) -> Response:
        product = await changes.patch_product(conn, sku=sku, patch=body, etags=accepted)
        return _json(product.json, headers={"ETag": product.etag})

    return await idempotency.run(operation)


@router.delete(
    "/{sku}",
    status_code=204,
    responses=problems(404, 412),
    summary="Delete a product and its movement history",
)
async def delete_product(
    sku: str, idempotency: IdempotencyDep, if_match: IfMatch = None
) -> Response:
    if not could_be_sku(sku):
        raise product_not_found(sku)
    accepted = etags.if_match_tags(if_match)

    async def operation(conn: AsyncConnection[Any]) -> Response:
        await changes.delete_product(conn, sku=sku, etags=accepted)
        return Response(status_code=204)

    return await idempotency.run(operation)

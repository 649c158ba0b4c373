"""/products: add, list, look up, change and delete products."""

from dataclasses import replace
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from app.core.errors import ProductNotFound, ValidationFailed
from app.core.http import etags
from app.core.http.formats import FRAMINGS, Format, negotiate
from app.core.http.limits import JsonRoute
from app.core.http.pagination import (
    After,
    Limit,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
    next_link,
)
from app.core.http.streaming import CopyStream
from app.core.openapi import problems
from app.database import Connection
from app.deps import (
    Credential,
    DatabaseDep,
    IdempotencyDep,
    IdempotencyKey,
    ProductSku,
    ReadsDep,
)
from app.listing import queries as listing
from app.listing.rendering import render_page
from app.products import queries as products
from app.products.schemas import ProductCreate, ProductRead, ProductUpdate
from app.rules import QUANTITY_MAX, SKU_CHARS_PATTERN, SKU_MAX

router = APIRouter(
    prefix="/products", tags=["products"], responses=problems(503), route_class=JsonRoute
)

IfNoneMatch = Annotated[
    str | None, Header(alias="If-None-Match", description="ETags you hold: 304 if current")
]


async def _if_match(
    if_match: Annotated[
        str | None,
        Header(alias="If-Match", description="Change only if the product still has this ETag"),
    ] = None,
) -> list[str] | None:
    return etags.if_match_tags(if_match)


# The ETags a conditional write accepts (None: no condition).
IfMatch = Annotated[list[str] | None, Depends(_if_match)]
SkuPrefix = Annotated[
    str | None,
    Query(
        max_length=SKU_MAX,
        pattern=SKU_CHARS_PATTERN,
        description="Only SKUs starting with this, in any letter case",
    ),
]


def _json(
    product: products.ProductJson, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        product.json,
        status_code=status_code,
        headers={"ETag": product.etag, **(headers or {})},
        media_type="application/json",
    )


@router.post(
    "",
    operation_id="createProduct",
    status_code=201,
    response_model=ProductRead,
    responses=problems(409, 422),
    summary="Add a product",
)
async def create_product(
    body: ProductCreate,
    idempotency: IdempotencyDep,
    credential: Credential,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    async def operation(conn: Connection) -> Response:
        product = await products.create_product(conn, new=body)
        return _json(product, 201, {"Location": f"/products/{body.sku}"})

    return await idempotency.run(
        operation,
        key=idempotency_key,
        credential=credential,
        scope="POST /products",
        request=(body,),
    )


Search = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=listing.SEARCH_MAX,
        pattern=r"^[^\x00]*$",
        description="Only products whose name or SKU contains this, ignoring case "
        "(a literal substring: % _ \\ match themselves)",
    ),
]
QuantityMax = Annotated[
    int | None, Query(ge=0, description="Only products with at most this many in stock")
]
LowStock = Annotated[
    Literal["true"] | None,
    Query(description="`true`: only products at or below their reorder point"),
]
SpreadsheetSafe = Annotated[
    Literal["true"] | None,
    Query(
        description="`true`: a CSV cell of free text (name, description) that a spreadsheet "
        "would run as a formula (it begins with = + - @, tab or CR) gets a ' in front. "
        "Other formats ignore it."
    ),
]


def _position(cursor: str, query: listing.Listing) -> tuple[datetime, int]:
    """The keyset position of a cursor issued for the same filters (else 422)."""
    created_at, id_, filters = decode_cursor(cursor, str, int, str)
    if filters != query.filters_key():
        raise ValidationFailed.field(
            "after",
            "was issued for other filters",
            "A cursor continues the listing it came from: send the same filters with it.",
        )
    try:
        return datetime.fromisoformat(created_at), id_
    except ValueError:
        raise invalid_cursor() from None


@router.get(
    "",
    operation_id="listProducts",
    response_model=list[ProductRead],
    responses={
        **problems(406, 422),
        200: {"content": {f.value: {} for f in Format if f is not Format.JSON}},
    },
    summary="List products oldest first: everything (streamed) or one page; JSON, CSV, NDJSON",
)
async def list_products(
    request: Request,
    reads: ReadsDep,
    limit: Limit = None,
    after: After = None,
    sku_prefix: SkuPrefix = None,
    q: Search = None,
    quantity_max: QuantityMax = None,
    low_stock: LowStock = None,
    spreadsheet_safe: SpreadsheetSafe = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    fmt = negotiate(accept)
    for_spreadsheet = spreadsheet_safe is not None
    query = listing.Listing(
        prefix=listing.prefix_range(sku_prefix) if sku_prefix else None,
        q=q,
        # No quantity is larger: the same products, and a value the column type can take.
        quantity_max=None if quantity_max is None else min(quantity_max, QUANTITY_MAX),
        low_stock=low_stock is not None,
        limit=limit,
    )
    if after is not None:
        query = replace(query, after=_position(after, query))
    if limit is None:
        return CopyStream(
            reads,
            query.export(csv=fmt is Format.CSV, for_spreadsheet=for_spreadsheet),
            query.params(),
            framing=FRAMINGS[fmt],
            media_type=fmt.content_type,
        )
    page = await reads.run(lambda db: listing.page(db, query))
    headers = {}
    if page.next_after is not None:
        created_at, id_ = page.next_after
        cursor = encode_cursor(created_at.isoformat(), id_, query.filters_key())
        headers["Link"] = next_link(request, cursor)
    body = render_page(fmt, [row.json for row in page.rows], for_spreadsheet=for_spreadsheet)
    return Response(body, headers=headers, media_type=fmt.content_type)


@router.get(
    "/{sku}",
    operation_id="getProduct",
    response_model=ProductRead,
    responses={**problems(404), 304: {"description": "Not modified: your ETag is current"}},
    summary="Look up one product by SKU, ignoring case",
)
async def get_product(
    sku: ProductSku, db: DatabaseDep, if_none_match: IfNoneMatch = None
) -> Response:
    product = await products.get_product(db, sku=sku)
    if product is None:
        raise ProductNotFound(sku)
    if etags.none_match(if_none_match, product.etag):
        return Response(status_code=304, headers={"ETag": product.etag})
    return _json(product)


@router.patch(
    "/{sku}",
    operation_id="updateProduct",
    response_model=ProductRead,
    responses=problems(404, 412, 422),
    summary="Change name, description, price or reorder point (JSON merge patch)",
)
async def patch_product(
    sku: ProductSku, body: ProductUpdate, db: DatabaseDep, accepted: IfMatch
) -> Response:
    async def operation(conn: Connection) -> Response:
        return _json(await products.patch_product(conn, sku=sku, patch=body, etags=accepted))

    return await db.write(operation, transaction=False)


@router.delete(
    "/{sku}",
    operation_id="deleteProduct",
    status_code=204,
    responses=problems(404, 412),
    summary="Delete a product",
)
async def delete_product(sku: ProductSku, db: DatabaseDep, accepted: IfMatch) -> Response:
    async def operation(conn: Connection) -> Response:
        await products.delete_product(conn, sku=sku, etags=accepted)
        return Response(status_code=204)

    return await db.write(operation, transaction=False)

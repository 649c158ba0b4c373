"""GET /products: every product (streamed) or one page, filtered; JSON, CSV or NDJSON."""

import re
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response

from app.core.errors import ValidationFailed
from app.core.http.formats import FRAMINGS, Format, negotiate
from app.core.http.pagination import (
    PAGE_MAX,
    After,
    Limit,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
    next_link,
)
from app.core.http.shortcuts import ShortcutRoute, shortcut
from app.core.http.streaming import CopyStream
from app.core.openapi import problems
from app.deps import ReadsDep, shortcut_credential
from app.listing import queries as listing
from app.listing.rendering import render_page
from app.products.schemas import ProductRead
from app.rules import QUANTITY_MAX, SKU_CHARS_PATTERN, SKU_MAX

router = APIRouter(
    prefix="/products", tags=["products"], responses=problems(503), route_class=ShortcutRoute
)

SkuPrefix = Annotated[
    str | None,
    Query(
        max_length=SKU_MAX,
        pattern=SKU_CHARS_PATTERN,
        description="Only SKUs starting with this, in any letter case",
    ),
]
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


_PAGE_SIZE = re.compile(r"[1-9][0-9]{0,3}")


async def _plain_page(request: Request) -> dict[str, Any] | None:
    # The common page: `?limit=N` alone, N within Limit's bounds.
    query = request.query_params.multi_items()
    if len(query) != 1 or query[0][0] != "limit" or not _PAGE_SIZE.fullmatch(query[0][1]):
        return None
    limit = int(query[0][1])
    if limit > PAGE_MAX or shortcut_credential(request) is None:
        return None
    return {
        "request": request,
        "reads": request.state.reads,
        "limit": limit,
        "accept": request.headers.get("accept"),
    }


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
@shortcut(_plain_page)
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
            query.stream(csv=fmt is Format.CSV, for_spreadsheet=for_spreadsheet),
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

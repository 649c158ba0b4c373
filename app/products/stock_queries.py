"""Stock: atomic adjustments with their ledger row, and a product's movement history."""

import psycopg
from sqlalchemy import BindParameter, Text, bindparam, cast, func, literal, or_, select, true

from app.core.errors import refused
from app.core.pages import cut_page
from app.database import Bound, Connection, Database, compile_once
from app.models import Product, StockMovement
from app.products.queries import ProductJson
from app.products.schemas import AdjustmentCreate
from app.products.statements import MOVEMENT_JSON, sku_is

# The rules of an adjustment live in the database's adjust_stock(), the function psql users
# call too: the product and the location by any case, the stock row locked, the movement
# written with the quantity it leaves, which the ledger's trigger applies and checks. Its
# errors say which rule refused (schema.sql, at the function).
_adjusted = (
    select(
        cast(
            func.adjust_stock(
                bindparam("sku"),
                bindparam("delta"),
                bindparam("reason"),
                bindparam("note"),
                bindparam("location"),
            ),
            Text,
        ).label("json")
    )
    # A subquery, so the function runs once (a volatile call is never pulled up) and the ETag
    # is the md5 of the very text returned, as product_etag() computes it.
    .subquery("adjusted")
)
_ADJUST = compile_once(
    select(_adjusted.c.json, literal('"') + func.md5(_adjusted.c.json) + literal('"'))
)

# `location=CODE`: the movements made at a location, by the code they show (a deleted
# location's too); NULL keeps all.
_location: BindParameter[str | None] = bindparam("location", type_=Text)
_at_location = or_(_location.is_(None), func.lower(StockMovement.location) == func.lower(_location))
# The product (a row even when it has no movements, none when it does not exist) and up to
# `limit` of its movements after the cursor, in one round trip.
_page = (
    select(MOVEMENT_JSON, StockMovement.id)
    .where(
        StockMovement.product_id == Product.id,
        StockMovement.id > bindparam("after"),
        _at_location,
    )
    .order_by(StockMovement.id)
    .limit(bindparam("limit"))
    .lateral("m")
)
_MOVEMENTS_PAGE = compile_once(
    select(_page.c.json, _page.c.id)
    .select_from(Product.__table__.outerjoin(_page, true()))
    .where(sku_is())
    .order_by(_page.c.id)
)
_PRODUCT_ID = compile_once(select(Product.id).where(sku_is()))
_MOVEMENTS = compile_once(
    select(MOVEMENT_JSON)
    .where(
        StockMovement.product_id == bindparam("product_id"),
        StockMovement.id > bindparam("after"),
        _at_location,
    )
    .order_by(StockMovement.id)
)


async def adjust_stock(conn: Connection, *, sku: str, adjustment: AdjustmentCreate) -> ProductJson:
    """Add `delta` to the quantity at the location and record the movement, atomically;
    return the product.

    Raises ProductNotFound, LocationNotFound; InsufficientStock (with `available` there) when
    the location would hold fewer units than it has reserved, nothing changed;
    StockLimitExceeded when a quantity would pass the integer range.
    """
    where = adjustment.location
    params = _ADJUST.params(sku=sku, **adjustment.model_dump())
    try:
        row = await (await conn.execute(_ADJUST.sql, params)).fetchone()
    except psycopg.Error as exc:
        raise refused(
            exc, sku=sku, delta=adjustment.delta, short_at=where, locations={None: where}
        ) from None
    assert row is not None  # the function returns a row or raises
    return ProductJson(*row)


async def product_id(db: Database, *, sku: str) -> int | None:
    async with db.connection() as conn:
        cur = await conn.execute(_PRODUCT_ID.sql, _PRODUCT_ID.params(sku=sku))
        row = await cur.fetchone()
    return None if row is None else int(row[0])


async def movements_page(
    db: Database, *, sku: str, after: int, limit: int, location: str | None = None
) -> tuple[list[str], int | None] | None:
    """Up to `limit` movements with id > `after` (at `location`, if given), oldest first, and
    the last id if more remain; None when the product does not exist."""
    params = _MOVEMENTS_PAGE.params(sku=sku, after=after, limit=limit + 1, location=location)
    async with db.connection() as conn:
        rows = await (await conn.execute(_MOVEMENTS_PAGE.sql, params)).fetchall()
    return cut_page(rows, limit)


def all_movements(*, product: int, after: int, location: str | None = None) -> Bound:
    """Every movement of a product after a cursor (at `location`, if given), oldest first,
    to stream."""
    params = _MOVEMENTS.params(product_id=product, after=after, location=location)
    return Bound(_MOVEMENTS.sql, params)

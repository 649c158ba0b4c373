"""Stock: atomic adjustments with their ledger row, and a product's movement history."""

from psycopg import errors
from sqlalchemy import BindParameter, bindparam, insert, select, true, update

from app.core.errors import InsufficientStock, ProductNotFound, refused
from app.core.pages import cut_page
from app.database import Bound, Connection, Database, compile_once
from app.models import Product, StockMovement
from app.products.queries import ProductJson, quantity_of
from app.products.schemas import AdjustmentCreate
from app.products.statements import MOVEMENT_JSON, PRODUCT_ETAG, PRODUCT_JSON, sku_is

# One statement: the guarded increment and its ledger row. The INSERT consumes the UPDATE's
# RETURNING, so it runs only if the UPDATE changed the row, after it took the row lock: per
# product, movement ids are handed out in commit order, which makes `ORDER BY id` the
# history and keyset paging on id safe. `quantity + delta` overflowing integer raises 22003;
# the CHECK products_quantity_check stays the last guard.
_delta: BindParameter[int] = bindparam("delta")
_moved = (
    update(Product)
    .where(sku_is(), Product.quantity + _delta >= 0)
    .values(quantity=Product.quantity + _delta)
    .returning(Product.id, Product.quantity, PRODUCT_JSON, PRODUCT_ETAG)
    .cte("moved")
)
_logged = (
    insert(StockMovement)
    .from_select(
        ["product_id", "delta", "reason", "note", "quantity_after"],
        select(_moved.c.id, _delta, bindparam("reason"), bindparam("note"), _moved.c.quantity),
    )
    .cte("logged")
)
_ADJUST = compile_once(select(_moved.c.json, _moved.c.etag).add_cte(_logged))

# The product (a row even when it has no movements, none when it does not exist) and up to
# `limit` of its movements after the cursor, in one round trip.
_page = (
    select(MOVEMENT_JSON, StockMovement.id)
    .where(StockMovement.product_id == Product.id, StockMovement.id > bindparam("after"))
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
        StockMovement.product_id == bindparam("product_id"), StockMovement.id > bindparam("after")
    )
    .order_by(StockMovement.id)
)


async def adjust_stock(conn: Connection, *, sku: str, adjustment: AdjustmentCreate) -> ProductJson:
    """Add `delta` to the quantity and record the movement, atomically; return the product.

    Raises ProductNotFound; InsufficientStock (with `available`) when the quantity would go
    below zero, nothing changed; StockLimitExceeded when it would pass the integer range.
    """
    params = _ADJUST.params(sku=sku, **adjustment.model_dump())
    # Stock that was short can arrive between the failed UPDATE and the look at the current
    # quantity; then the adjustment is tried again (bounded: stock keeps moving).
    available = 0
    for _ in range(3):
        try:
            row = await (await conn.execute(_ADJUST.sql, params)).fetchone()
        except errors.NumericValueOutOfRange as exc:
            raise refused(exc, sku=sku, delta=adjustment.delta) from None
        if row is not None:
            return ProductJson(*row)
        current = await quantity_of(conn, sku=sku)
        if current is None:
            raise ProductNotFound(sku)
        available = current
        if available + adjustment.delta < 0:
            break
    raise InsufficientStock(sku, available=available, delta=adjustment.delta)


async def product_id(db: Database, *, sku: str) -> int | None:
    async with db.connection() as conn:
        cur = await conn.execute(_PRODUCT_ID.sql, _PRODUCT_ID.params(sku=sku))
        row = await cur.fetchone()
    return None if row is None else int(row[0])


async def movements_page(
    db: Database, *, sku: str, after: int, limit: int
) -> tuple[list[str], int | None] | None:
    """Up to `limit` movements with id > `after`, oldest first, and the last id if more
    remain; None when the product does not exist."""
    params = _MOVEMENTS_PAGE.params(sku=sku, after=after, limit=limit + 1)
    async with db.connection() as conn:
        rows = await (await conn.execute(_MOVEMENTS_PAGE.sql, params)).fetchall()
    return cut_page(rows, limit)


def all_movements(*, product: int, after: int) -> Bound:
    """Every movement of a product after a cursor, oldest first, to stream."""
    return Bound(_MOVEMENTS.sql, _MOVEMENTS.params(product_id=product, after=after))

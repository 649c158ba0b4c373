"""Changing a product (PATCH, DELETE, stock adjustments) and reading its movement ledger.

Every change is one SQL statement whose WHERE clause carries all its conditions (the SKU,
the If-Match ETags, enough stock). At READ COMMITTED, PostgreSQL re-checks that WHERE on
the newest version of a row another transaction changed meanwhile, so a condition and
the write it guards cannot be split by a concurrent change, and no row lock is held
while Python runs. Only when no row comes back does a second query say why (404, 409, 412).
"""

from typing import Any

from psycopg import AsyncConnection, errors, sql

from app.errors import ApiError, product_not_found
from app.queries import Product
from app.schemas import AdjustmentCreate, ProductUpdate

# `%(etags)s IS NULL`: no If-Match (or `*`); otherwise the row must be in one of the states
# the client named. Same expression for PATCH and DELETE.
_IF_MATCH = "(%(etags)s::text[] IS NULL OR product_etag(p) = ANY(%(etags)s::text[]))"

_DELETE = f"""
    DELETE FROM products p
    WHERE lower(p.sku) = lower(%(sku)s) AND {_IF_MATCH}
    RETURNING p.id
"""
_CURRENT = f"""
    SELECT product_json(p)::text, product_etag(p) FROM products p
    WHERE lower(p.sku) = lower(%(sku)s) AND {_IF_MATCH}
"""
_EXISTS = "SELECT quantity FROM products WHERE lower(sku) = lower(%s)"

# One statement: the guarded increment and its ledger row. The INSERT consumes the UPDATE's
# RETURNING, so it runs only if the UPDATE changed the row, after it took the row lock:
# per product, movement ids are therefore handed out in commit order, which is what makes
# `ORDER BY id` the history and keyset paging on id safe. `quantity + delta` overflowing
# integer raises 22003 (-> 422); the CHECK products_quantity_check stays the last guard.
_ADJUST = """
    WITH moved AS (
        UPDATE products p SET quantity = p.quantity + %(delta)s
        WHERE lower(p.sku) = lower(%(sku)s) AND p.quantity + %(delta)s >= 0
        RETURNING p.id, p.quantity, product_json(p)::text AS json, product_etag(p) AS etag
    ), logged AS (
        INSERT INTO stock_movements (product_id, delta, reason, note, quantity_after)
        SELECT id, %(delta)s, %(reason)s, %(note)s, quantity FROM moved
    )
    SELECT json, etag FROM moved
"""

# The product (a row even when it has no movements, none when it does not exist) and up to
# `limit` of its movements after the cursor, in one round trip.
_MOVEMENTS_PAGE = """
    SELECT m.json, m.id
    FROM products p
    LEFT JOIN LATERAL (
        SELECT movement_json(s)::text AS json, s.id
        FROM stock_movements s
        WHERE s.product_id = p.id AND s.id > %(after)s
        ORDER BY s.id
        LIMIT %(limit)s
    ) m ON true
    WHERE lower(p.sku) = lower(%(sku)s)
    ORDER BY m.id
"""
_PRODUCT_ID = "SELECT id FROM products WHERE lower(sku) = lower(%s)"
MOVEMENTS = """
    SELECT movement_json(s)::text FROM stock_movements s
    WHERE s.product_id = %s AND s.id > %s
    ORDER BY s.id
"""


def precondition_failed(sku: str) -> ApiError:
    return ApiError(
        412,
        "precondition_failed",
        f"Product '{sku}' has changed since the ETag in If-Match; nothing was changed.",
    )


async def _why_not(conn: AsyncConnection[Any], sku: str) -> ApiError:
    """The product is missing (404), or it exists and its ETag did not match (412)."""
    cur = await conn.execute(_EXISTS, (sku,))
    return product_not_found(sku) if await cur.fetchone() is None else precondition_failed(sku)


async def patch_product(
    conn: AsyncConnection[Any], *, sku: str, patch: ProductUpdate, etags: list[str] | None
) -> Product:
    """Apply a merge patch (only the fields the client sent) and return the product.

    An empty patch writes nothing (updated_at and the ETag stay), but If-Match still
    applies. Raises ApiError 404, 412; database CHECKs surface as psycopg errors (422).
    """
    fields = patch.model_dump(include=patch.model_fields_set & ProductUpdate.PATCHABLE)
    params = {"sku": sku, "etags": etags, **fields}
    query: sql.Composable
    if not fields:
        query = sql.SQL(_CURRENT)
    else:
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name))
            for name in sorted(fields)
        )
        query = sql.SQL(
            "UPDATE products p SET {} WHERE lower(p.sku) = lower(%(sku)s) AND "
            + _IF_MATCH
            + " RETURNING product_json(p)::text, product_etag(p)"
        ).format(assignments)
    row = await (await conn.execute(query, params)).fetchone()
    if row is None:
        raise await _why_not(conn, sku)
    return Product(*row)


async def delete_product(conn: AsyncConnection[Any], *, sku: str, etags: list[str] | None) -> None:
    """Delete the product and, by cascade, its movements. Raises ApiError 404, 412."""
    cur = await conn.execute(_DELETE, {"sku": sku, "etags": etags})
    if await cur.fetchone() is None:
        raise await _why_not(conn, sku)


async def adjust_stock(
    conn: AsyncConnection[Any], *, sku: str, adjustment: AdjustmentCreate
) -> Product:
    """Add `delta` to the quantity and record the movement, atomically; return the product.

    Raises ApiError 404; 409 insufficient_stock with `available` when the quantity would go
    below zero (nothing changed); 422 when it would exceed the integer range.
    """
    params = {"sku": sku, **adjustment.model_dump()}
    # Stock that was short can arrive between the failed UPDATE and the look at the current
    # quantity; then the adjustment is simply tried again (bounded: stock keeps moving).
    for _ in range(3):
        try:
            row = await (await conn.execute(_ADJUST, params)).fetchone()
        except errors.NumericValueOutOfRange:
            raise ApiError(
                422,
                "validation_failed",
                "The adjustment would take the quantity above 2147483647.",
                errors=[{"field": "delta", "message": "would take quantity above 2147483647"}],
            ) from None
        if row is not None:
            return Product(*row)
        current = await (await conn.execute(_EXISTS, (sku,))).fetchone()
        if current is None:
            raise product_not_found(sku)
        (available,) = current
        if available + adjustment.delta < 0:
            raise ApiError(
                409,
                "insufficient_stock",
                f"Product '{sku}' has {available} in stock; cannot remove {-adjustment.delta}.",
                available=available,
            )
    raise ApiError(
        409,
        "insufficient_stock",
        f"Product '{sku}' did not have enough stock at the moment of the adjustment.",
        available=available,
    )


async def product_id(conn: AsyncConnection[Any], *, sku: str) -> int | None:
    row = await (await conn.execute(_PRODUCT_ID, (sku,))).fetchone()
    return None if row is None else int(row[0])


async def movements_page(
    conn: AsyncConnection[Any], *, sku: str, after: int, limit: int
) -> tuple[list[str], int | None] | None:
    """Up to `limit` movements with id > `after`, oldest first, and the last id if more
    remain; None when the product does not exist."""
    cur = await conn.execute(_MOVEMENTS_PAGE, {"sku": sku, "after": after, "limit": limit + 1})
    rows = await cur.fetchall()
    if not rows:
        return None
    page = [(json, id_) for json, id_ in rows if json is not None]
    more = len(page) > limit
    page = page[:limit]
    return [json for json, _ in page], (page[-1][1] if more else None)

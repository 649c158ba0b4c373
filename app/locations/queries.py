"""Locations, the stock at each, and transfers, in SQL.

Rows leave PostgreSQL as API JSON (schema.sql: location_json, product_stock_json,
location_stock_json, transfer_json); a transfer's rules are schema.sql's transfer_stock().
"""

from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import (
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.sql import Select

from app.core.errors import refused
from app.database import Bound, Connection, Database, compile_once
from app.models import Location, Product, ProductStock
from app.products.statements import COPY_CSV, COPY_JSON_ROWS, PRODUCT_ROW, sku_is

LOCATION_ROW = Location.__table__.table_valued()  # type: ignore[attr-defined]
STOCK_ROW = ProductStock.__table__.table_valued()  # type: ignore[attr-defined]
LOCATION_JSON = cast(func.location_json(LOCATION_ROW), Text).label("json")


def code_is(name: str = "code") -> Any:
    """`lower(locations.code) = lower(:name)`: served by locations_code_lower_key."""
    return func.lower(Location.code) == func.lower(bindparam(name))


_CREATE = compile_once(
    insert(Location)
    .values(code=bindparam("code"), name=bindparam("name"))
    .returning(Location.code, LOCATION_JSON)
)
_GET = compile_once(select(LOCATION_JSON).where(code_is()))
_RENAME = compile_once(
    update(Location).where(code_is()).values(name=bindparam("name")).returning(LOCATION_JSON)
)
_DELETE = compile_once(delete(Location).where(code_is()).returning(Location.id))
_PAGE = compile_once(
    select(LOCATION_JSON, Location.created_at, Location.id)
    .where(
        tuple_(Location.created_at, Location.id)
        > tuple_(bindparam("after_at"), bindparam("after_id"))
    )
    .order_by(Location.created_at, Location.id)
    .limit(bindparam("limit"))
)
_PRODUCT_STOCK = compile_once(
    select(cast(func.product_stock_json(PRODUCT_ROW), Text)).where(sku_is())
)
_LOCATION_ID = compile_once(select(Location.id).where(code_is()))
# A location's stock by SKU, case-insensitively: every product holding units or holds there.
# Ordered by lower(sku) in byte order (~<~, text_pattern_ops' own order), so that a page walks
# products_sku_lower_key and probes each product's stock row, or, at a location holding few
# products, reads them by product_stock's location index and sorts them: either way a page
# costs its rows, not the location's size.
_key = func.lower(Product.sku)


def _at_location(*columns: Any) -> Select[Any]:
    return (
        select(*columns)
        .join_from(ProductStock, Product, Product.id == ProductStock.product_id)
        .where(
            ProductStock.location_id == bindparam("location_id"),
            (ProductStock.quantity != 0) | (ProductStock.reserved != 0),
        )
        .order_by(literal_column("lower(products.sku) USING ~<~"))
    )


_after = _key.op("~>~")(bindparam("after", type_=Text))
_LOCATION_STOCK_PAGE = compile_once(
    _at_location(
        cast(func.location_stock_json(PRODUCT_ROW, STOCK_ROW), Text).label("json"),
        _key.label("key"),
    )
    .where(_after)
    .limit(bindparam("limit"))
)
# Every row, for a stream: JSON rows, or the CSV columns (the JSON's keys, in its order).
_EXPORT_COLUMNS = {
    False: (cast(func.location_stock_json(PRODUCT_ROW, STOCK_ROW), Text),),
    True: (Product.sku, ProductStock.quantity, ProductStock.reserved, ProductStock.available),
}
_EXPORTS = {
    (csv, after): compile_once(
        _at_location(*_EXPORT_COLUMNS[csv]).where(_after if after else true())
    )
    for csv in (False, True)
    for after in (False, True)
}
_TRANSFER = compile_once(
    select(
        cast(
            func.transfer_stock(
                bindparam("sku"),
                bindparam("from_"),
                bindparam("to"),
                bindparam("quantity"),
                bindparam("note"),
            ),
            Text,
        )
    )
)


class LocationRow(NamedTuple):
    json: str
    created_at: datetime
    id: int


async def create_location(conn: Connection, *, code: str, name: str) -> tuple[str, str]:
    """The stored code and the location's JSON; a taken code raises UniqueViolation."""
    row = await (await conn.execute(_CREATE.sql, _CREATE.params(code=code, name=name))).fetchone()
    assert row is not None
    return row[0], row[1]


async def location(db: Database, *, code: str) -> str | None:
    async with db.connection() as conn:
        row = await (await conn.execute(_GET.sql, _GET.params(code=code))).fetchone()
    return None if row is None else str(row[0])


async def rename_location(conn: Connection, *, code: str, name: str) -> str | None:
    row = await (await conn.execute(_RENAME.sql, _RENAME.params(code=code, name=name))).fetchone()
    return None if row is None else str(row[0])


async def delete_location(conn: Connection, *, code: str) -> bool:
    """False when there is no such location; one in use raises (schema.sql: locations_guard)."""
    return (
        await (await conn.execute(_DELETE.sql, _DELETE.params(code=code))).fetchone()
    ) is not None


async def locations_page(
    db: Database, *, after: tuple[datetime, int] | None, limit: int
) -> list[LocationRow]:
    """Up to `limit` locations after the cursor, oldest first."""
    after_at, after_id = after if after is not None else (datetime.min, 0)
    params = _PAGE.params(after_at=after_at, after_id=after_id, limit=limit)
    async with db.connection() as conn:
        rows = await (await conn.execute(_PAGE.sql, params)).fetchall()
    return [LocationRow(*row) for row in rows]


async def product_stock(db: Database, *, sku: str) -> str | None:
    async with db.connection() as conn:
        cur = await conn.execute(_PRODUCT_STOCK.sql, _PRODUCT_STOCK.params(sku=sku))
        row = await cur.fetchone()
    return None if row is None else str(row[0])


async def location_id(db: Database, *, code: str) -> int | None:
    async with db.connection() as conn:
        cur = await conn.execute(_LOCATION_ID.sql, _LOCATION_ID.params(code=code))
        found = await cur.fetchone()
    return None if found is None else int(found[0])


async def location_stock_page(
    db: Database, *, code: str, after: str | None, limit: int
) -> list[tuple[str, str]] | None:
    """(json, sort key) of the products with stock or holds at a location, by SKU, at most
    `limit` after the key `after`; None when no location has the code."""
    async with db.connection() as conn:
        cur = await conn.execute(_LOCATION_ID.sql, _LOCATION_ID.params(code=code))
        found = await cur.fetchone()
        if found is None:
            return None
        params = {"location_id": int(found[0]), "after": after or "", "limit": limit}
        statement = _LOCATION_STOCK_PAGE
        rows = await (await conn.execute(statement.sql, statement.params(**params))).fetchall()
    return [(str(json), str(key)) for json, key in rows]


def location_stock_export(location_id: int, *, after: str | None, csv: bool) -> Bound:
    """A COPY of every product with stock or holds at the location (after the key `after`),
    by SKU: CSV with a header, or JSON rows; for a response to stream."""
    statement = _EXPORTS[csv, after is not None]
    params: dict[str, Any] = {"location_id": location_id}
    if after is not None:
        params["after"] = after
    copy = psycopg.sql.SQL(COPY_CSV if csv else COPY_JSON_ROWS)
    return Bound(copy.format(psycopg.sql.SQL(statement.sql)), statement.params(**params))


async def transfer(
    conn: Connection, *, sku: str, from_: str, to: str, quantity: int, note: str | None
) -> str:
    """The transfer's JSON. Raises ProductNotFound, LocationNotFound, InsufficientStock (with
    what is available at `from`), StockLimitExceeded (`to` would pass the integer range)."""
    params = _TRANSFER.params(sku=sku, from_=from_, to=to, quantity=quantity, note=note)
    try:
        row = await (await conn.execute(_TRANSFER.sql, params)).fetchone()
    except psycopg.Error as exc:
        raise refused(
            exc, sku=sku, delta=quantity, short_at=from_, locations={"from": from_, "to": to}
        ) from None
    assert row is not None
    return str(row[0])

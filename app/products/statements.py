"""Expressions every query module shares: a product's SKU match, its JSON and its ETag, and
the COPY statements that stream query results."""

from sqlalchemy import Text, bindparam, cast, func
from sqlalchemy.sql.elements import ColumnElement

from app.models import Product, StockMovement

# The whole row as a function argument: product_json(products), movement_json(...).
PRODUCT_ROW = Product.__table__.table_valued()  # type: ignore[attr-defined]
MOVEMENT_ROW = StockMovement.__table__.table_valued()  # type: ignore[attr-defined]

# Text, not json: psycopg would parse json into Python objects, and the API sends the
# text PostgreSQL built as it is (schema.sql: product_json, movement_json).
PRODUCT_JSON: ColumnElement[str] = cast(func.product_json(PRODUCT_ROW), Text).label("json")
PRODUCT_ETAG: ColumnElement[str] = func.product_etag(PRODUCT_ROW).label("etag")
MOVEMENT_JSON: ColumnElement[str] = cast(func.movement_json(MOVEMENT_ROW), Text).label("json")


def sku_is(sku: str | ColumnElement[str] = "sku") -> ColumnElement[bool]:
    """`lower(products.sku) = lower(:sku)`, or against a column: served by the unique index
    products_sku_lower_key."""
    value = bindparam(sku) if isinstance(sku, str) else sku
    return func.lower(Product.sku) == func.lower(value)


# COPY's text format would escape every backslash of JSON text; CSV format with a quote and
# a delimiter that JSON text never holds raw hands a JSON column over untouched, one per row.
COPY_JSON_ROWS = "COPY ({}) TO STDOUT (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"
# PostgreSQL's CSV is RFC 4180's quoting: fields holding a comma, quote, CR or LF, and empty
# strings, are quoted, quotes doubled; NULL is an empty field. HEADER names the columns.
COPY_CSV = "COPY ({}) TO STDOUT (FORMAT csv, HEADER true)"

"""Expressions every query module shares: a product's SKU match, its JSON and its ETag."""

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


def sku_is(name: str = "sku") -> ColumnElement[bool]:
    """`lower(products.sku) = lower(:name)`: served by the unique index products_sku_lower_key."""
    return func.lower(Product.sku) == func.lower(bindparam(name))

"""One async function per database operation. Rows leave PostgreSQL as API-ready JSON text."""

from typing import Any, NamedTuple

from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

from app.errors import ApiError
from app.schemas import ProductCreate

# product_json() is defined in schema.sql, so psql users see exactly what the API returns.
_INSERT_PRODUCT = """
    INSERT INTO products AS p (sku, name, description, price, quantity)
    VALUES (%(sku)s, %(name)s, %(description)s, %(price)s, %(quantity)s)
    RETURNING product_json(p)::text, product_etag(p)
"""
# One round trip for the hot path: the body and its ETag (product_etag(), schema.sql).
_GET_PRODUCT = (
    "SELECT product_json(p)::text, product_etag(p) FROM products p WHERE lower(p.sku) = lower(%s)"
)


class Product(NamedTuple):
    """One product as the API sends it: its JSON text and its strong ETag."""

    json: str
    etag: str


async def create_product(conn: AsyncConnection[Any], *, new: ProductCreate) -> Product:
    """Insert one product on `conn` and return it.

    Raises ApiError duplicate_sku when the SKU exists in any letter case: the unique index
    on lower(sku) decides, so concurrent inserts of one SKU cannot both succeed.
    """
    try:
        cur = await conn.execute(_INSERT_PRODUCT, new.model_dump())
    except errors.UniqueViolation as exc:
        if exc.diag.constraint_name != "products_sku_lower_key":
            raise
        raise ApiError(
            409, "duplicate_sku", f"A product with SKU '{new.sku}' already exists."
        ) from None
    row = await cur.fetchone()
    assert row is not None
    return Product(*row)


async def get_product(pool: AsyncConnectionPool[Any], *, sku: str) -> Product | None:
    """The product matched ignoring case, or None."""
    async with pool.connection() as conn:
        row = await _fetch_one(conn, _GET_PRODUCT, (sku,))
    return None if row is None else Product(*row)


async def _fetch_one(conn: AsyncConnection[Any], sql: str, params: Any) -> Any:
    cur = await conn.execute(sql, params)
    return await cur.fetchone()


async def schema_ready(pool: AsyncConnectionPool[Any], *, tables: list[str]) -> bool:
    """True when the database answers and every table of the models exists."""
    async with pool.connection() as conn:
        row = await _fetch_one(
            conn, "SELECT bool_and(to_regclass(t) IS NOT NULL) FROM unnest(%s::text[]) t", (tables,)
        )
    return bool(row and row[0])


async def list_page(
    pool: AsyncConnectionPool[Any], sql: str, params: Any, *, prepare: bool | None = None
) -> list[tuple[Any, ...]]:
    """All rows of a bounded query (a page of a listing: at most 1001 rows).

    prepare=False keeps a statement from being prepared, so every run is planned with its
    parameter values (a custom plan) instead of a generic plan that cannot see them.
    """
    async with pool.connection() as conn:
        cur = await conn.execute(sql, params, prepare=prepare)
        rows: list[tuple[Any, ...]] = await cur.fetchall()
        return rows

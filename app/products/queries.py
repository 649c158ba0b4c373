"""Products one at a time: add, look up, change, delete. Rows leave PostgreSQL as API JSON.

Every change is one statement whose WHERE carries all its conditions (the SKU, the
If-Match ETags). At READ COMMITTED PostgreSQL re-checks that WHERE on the newest version
of a row another transaction changed meanwhile, so a condition and the write it guards
cannot be split by a concurrent change. Only when no row comes back does a second query
say why (404 or 412).
"""

from collections.abc import Sequence
from functools import cache
from typing import NamedTuple

import psycopg
from psycopg import errors
from sqlalchemy import Text, any_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.core.coalescing import Coalescer
from app.core.errors import PreconditionFailed, ProductNotFound, refused
from app.database import Connection, Database, Statement, compile_once
from app.models import Product
from app.products.schemas import ProductCreate, ProductUpdate
from app.products.statements import PRODUCT_ETAG, PRODUCT_JSON, sku_is


class ProductJson(NamedTuple):
    """One product as the API sends it: its JSON text and its strong ETag."""

    json: str
    etag: str


# Clients may set these on create; the database sets the rest (id, timestamps).
CREATE_FIELDS = ("sku", "name", "description", "price", "quantity", "reorder_point")

# Many lookups in one statement: each asked SKU with its place in the batch (1-based).
_ASKED = (
    func.unnest(bindparam("skus", type_=ARRAY(Text)))
    .table_valued("sku", with_ordinality="place")
    .render_derived(name="asked")
)
_GET_MANY = compile_once(
    select(_ASKED.c.place, PRODUCT_JSON, PRODUCT_ETAG).join_from(
        _ASKED, Product, sku_is(_ASKED.c.sku)
    )
)
_INSERT = compile_once(
    insert(Product)
    .values({name: bindparam(name) for name in CREATE_FIELDS})
    .returning(PRODUCT_JSON, PRODUCT_ETAG)
)
# Many creates in one statement, in the order given: a SKU that exists, or came earlier in
# the same statement, is skipped rather than refused (the one given first wins).
_NEW = (
    func.unnest(
        *(bindparam(name, type_=ARRAY(Product.__table__.c[name].type)) for name in CREATE_FIELDS)
    )
    .table_valued(*CREATE_FIELDS, with_ordinality="place")
    .render_derived(name="new")
)
_INSERT_MANY = compile_once(
    pg_insert(Product)
    .from_select(
        list(CREATE_FIELDS),
        select(*(_NEW.c[name] for name in CREATE_FIELDS)).order_by(_NEW.c.place),
    )
    .on_conflict_do_nothing(index_elements=[func.lower(Product.sku)])
    .returning(Product.sku, PRODUCT_JSON, PRODUCT_ETAG)
)
_QUANTITY = compile_once(select(Product.quantity).where(sku_is()))

# No If-Match (or `*`): etags is NULL; otherwise the row must be in one of the states the
# client named. The same condition guards PATCH and DELETE.
_ETAGS = bindparam("etags", type_=ARRAY(Text))
_IF_MATCH = or_(_ETAGS.is_(None), PRODUCT_ETAG.element == any_(_ETAGS))

_DELETE = compile_once(delete(Product).where(sku_is(), _IF_MATCH).returning(Product.id))
_CURRENT = compile_once(select(PRODUCT_JSON, PRODUCT_ETAG).where(sku_is(), _IF_MATCH))


@cache
def _patch(fields: frozenset[str]) -> Statement:
    # One statement per set of patched fields (a handful exist); compiled on first use.
    return compile_once(
        update(Product)
        .where(sku_is(), _IF_MATCH)
        .values({name: bindparam(name) for name in sorted(fields)})
        .returning(PRODUCT_JSON, PRODUCT_ETAG)
    )


class Lookups:
    """Products by SKU, ignoring case. The lookups a process makes in one turn of its event
    loop run as one statement (app.core.coalescing)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._coalescer = Coalescer[str, ProductJson](self._fetch)

    async def get(self, sku: str) -> ProductJson | None:
        """The product whose SKU matches ignoring case, or None."""
        return await self._coalescer.get(sku)

    async def _fetch(self, skus: Sequence[str]) -> list[ProductJson | None]:
        async with self._db.connection() as conn:
            cur = await conn.execute(_GET_MANY.sql, _GET_MANY.params(skus=list(skus)))
            rows = await cur.fetchall()
        found: list[ProductJson | None] = [None] * len(skus)
        for place, json, etag in rows:
            found[place - 1] = ProductJson(json, etag)
        return found


# SQLSTATE classes of a statement refused for the data it carries (data exception,
# integrity constraint violation, a trigger's RAISE): one product of a batch can cause them.
_REFUSED_DATA = ("22", "23", "P0")


class Creates:
    """Products added one request at a time. The creates a process receives in one turn of
    its event loop are written by one statement (app.core.coalescing), committed together.

    Only what that statement writes comes from it. A create it skipped (its SKU exists, or
    came twice), or all of them when the database refuses the statement for its data (a
    CHECK refuses one product), run again on their own (create_product), each with its own
    answer or error; so a batch never answers differently from its creates made one by one
    in the order they came. Any other failure (the database is down, the pool timed out)
    is every caller's answer at once: running each again would only wait as long again.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._coalescer = Coalescer[ProductCreate, ProductJson](self._insert_many)

    async def create(self, new: ProductCreate) -> ProductJson:
        """Insert one product and return it. Raises what create_product raises."""
        made = await self._coalescer.get(new)
        if made is None:
            made = await self._db.write(
                lambda conn: create_product(conn, new=new), transaction=False
            )
        return made

    async def _insert_many(self, news: Sequence[ProductCreate]) -> list[ProductJson | None]:
        made: list[ProductJson | None] = [None] * len(news)
        if len(news) == 1:
            return made  # alone: the plain INSERT
        # In SKU order: two batches creating the same new SKUs lock them in one order,
        # never in opposite ones (a deadlock).
        order = sorted(range(len(news)), key=lambda i: news[i].sku.lower())
        values = {name: [getattr(news[i], name) for i in order] for name in CREATE_FIELDS}

        async def insert_all(conn: Connection) -> list[tuple[str, str, str]]:
            cur = await conn.execute(_INSERT_MANY.sql, _INSERT_MANY.params(**values))
            return await cur.fetchall()

        try:
            rows = await self._db.write(insert_all, transaction=False)
        except psycopg.Error as exc:
            if (exc.sqlstate or "")[:2] not in _REFUSED_DATA:
                raise  # the database is failing, not refusing a product: tell every caller
            return made
        written = {sku: ProductJson(json, etag) for sku, json, etag in rows}
        for i in order:
            made[i] = written.pop(news[i].sku, None)
        return made


async def create_product(conn: Connection, *, new: ProductCreate) -> ProductJson:
    """Insert one product and return it.

    Raises DuplicateSku when the SKU exists in any letter case: the unique index on
    lower(sku) decides, so concurrent inserts of one SKU cannot both succeed.
    """
    try:
        cur = await conn.execute(_INSERT.sql, _INSERT.params(**new.model_dump()))
    except errors.UniqueViolation as exc:
        raise refused(exc, sku=new.sku) from None
    row = await cur.fetchone()
    assert row is not None
    return ProductJson(*row)


async def _why_not(conn: Connection, sku: str) -> Exception:
    """The product is missing (404), or it exists and its ETag did not match (412)."""
    missing = await quantity_of(conn, sku=sku) is None
    return ProductNotFound(sku) if missing else PreconditionFailed(sku)


async def patch_product(
    conn: Connection, *, sku: str, patch: ProductUpdate, etags: list[str] | None
) -> ProductJson:
    """Apply a merge patch (only the fields the client sent) and return the product.

    An empty patch writes nothing (updated_at and the ETag stay), but If-Match still
    applies. Raises ProductNotFound, PreconditionFailed; CHECKs surface as psycopg errors.
    """
    fields = patch.changes()
    statement = _patch(frozenset(fields)) if fields else _CURRENT
    cur = await conn.execute(statement.sql, statement.params(sku=sku, etags=etags, **fields))
    row = await cur.fetchone()
    if row is None:
        raise await _why_not(conn, sku)
    return ProductJson(*row)


async def delete_product(conn: Connection, *, sku: str, etags: list[str] | None) -> None:
    """Delete the product. Raises ProductNotFound, PreconditionFailed."""
    cur = await conn.execute(_DELETE.sql, _DELETE.params(sku=sku, etags=etags))
    if await cur.fetchone() is None:
        raise await _why_not(conn, sku)


async def quantity_of(conn: Connection, *, sku: str) -> int | None:
    """The product's quantity in stock now, or None when there is no such product."""
    row = await (await conn.execute(_QUANTITY.sql, _QUANTITY.params(sku=sku))).fetchone()
    return None if row is None else int(row[0])

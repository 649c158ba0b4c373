"""GET /products as SQL: which products (filters, keyset position) as a page or a COPY export."""

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, TypeVar

from psycopg import sql
from sqlalchemy import Select, bindparam, func, literal_column, select, tuple_
from sqlalchemy.sql.elements import ColumnElement

from app.database import Database, Statement, compile_once
from app.models import Product
from app.queries.common import PRODUCT_JSON

_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])

# List order: oldest first, id breaking ties; also the keyset (products_created_at_id_idx).
_ORDER = (Product.created_at, Product.id)
# The CSV columns are product_fields()'s (schema.sql): the API's field order and formatting.
_CSV_FIELDS: ColumnElement[Any] = literal_column("(product_fields(products)).*")
# COPY's text format would escape every backslash of the JSON; CSV format with a quote and
# a delimiter that JSON text never holds raw hands product_json's text over untouched.
_COPY_JSON = "COPY ({}) TO STDOUT (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"
# PostgreSQL's CSV is RFC 4180's quoting: fields holding a comma, quote, CR or LF, and empty
# strings, are quoted, quotes doubled; NULL is an empty field. HEADER names the columns.
_COPY_CSV = "COPY ({}) TO STDOUT (FORMAT csv, HEADER true)"


def prefix_range(prefix: str) -> tuple[str, str]:
    """[low, high) bounds on lower(sku) that hold exactly the SKUs starting with prefix.

    Byte order (text_pattern_ops): every SKU character is ASCII below 0x7f, so bumping the
    last character gives the first string past every extension of the prefix.
    """
    low = prefix.lower()
    return low, low[:-1] + chr(ord(low[-1]) + 1)


@dataclass(frozen=True)
class Listing:
    """Which products to list: filters, a keyset position, and a page size (None: all)."""

    # [low, high) bounds on lower(sku) for a SKU prefix (see prefix_range).
    prefix: tuple[str, str] | None = None
    after: tuple[datetime, int] | None = None
    limit: int | None = None

    def _shape(self) -> tuple[bool, bool]:
        return self.prefix is not None, self.after is not None

    def params(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.prefix:
            values["low"], values["high"] = self.prefix
        if self.after:
            values["after_at"], values["after_id"] = self.after
        if self.limit is not None:
            values["limit"] = self.limit + 1  # one more: are there more?
        return values

    def page(self) -> Statement:
        """Up to limit + 1 rows of (product JSON, created_at, id), in list order."""
        return _page(*self._shape())

    def export(self, csv: bool) -> sql.Composed:
        """A COPY ... TO STDOUT of every matching product: CSV with a header, or JSON rows."""
        return _export(*self._shape(), csv)


def _filtered(query: _Query, prefix: bool, after: bool) -> _Query:
    conditions: list[ColumnElement[bool]] = []
    if prefix:
        # A range rather than LIKE: `_` is both a SKU character and a LIKE wildcard, and
        # `~>=~`/`~<~` are the operators of the text_pattern_ops index products_sku_lower_key.
        sku = func.lower(Product.sku)
        conditions += [sku.op("~>=~")(bindparam("low")), sku.op("~<~")(bindparam("high"))]
    if after:
        conditions.append(tuple_(*_ORDER) > tuple_(bindparam("after_at"), bindparam("after_id")))
    return query.where(*conditions).order_by(*_ORDER)


@cache
def _page(prefix: bool, after: bool) -> Statement:
    query = select(PRODUCT_JSON, Product.created_at, Product.id)
    return compile_once(_filtered(query, prefix, after).limit(bindparam("limit")))


@cache
def _export(prefix: bool, after: bool, csv: bool) -> sql.Composed:
    columns = _CSV_FIELDS if csv else PRODUCT_JSON
    inner = compile_once(_filtered(select(columns).select_from(Product), prefix, after))
    return sql.SQL(_COPY_CSV if csv else _COPY_JSON).format(sql.SQL(inner.sql))


async def page(db: Database, listing: Listing) -> list[tuple[str, datetime, int]]:
    """One page (at most 1000 + 1 rows): each product's JSON and its keyset position."""
    statement = listing.page()
    # A prefix's selectivity decides the plan: few matches -> the SKU index, many -> walk
    # the (created_at, id) index. A prepared statement's generic plan cannot see the prefix
    # and settles on the latter for all; unprepared, every run is planned with its values.
    prepare = False if listing.prefix else None
    async with db.connection() as conn:
        cur = await conn.execute(statement.sql, listing.params(), prepare=prepare)
        return await cur.fetchall()

"""GET /products as SQL: which products (filters, keyset position) as a page or a COPY export."""

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple, TypeVar

from psycopg import sql
from sqlalchemy import (
    BigInteger,
    BindParameter,
    DateTime,
    Select,
    Text,
    bindparam,
    cast,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from app.database import Bound, Database, Statement, compile_once
from app.listing.rendering import CSV_FIELDS, FORMULA_STARTS, FREE_TEXT_FIELDS
from app.models import Product
from app.products.statements import COPY_CSV, COPY_JSON_ROWS, PRODUCT_JSON

_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])

# List order: oldest first, id breaking ties; also the keyset (products_created_at_id_idx).
_ORDER = (Product.created_at, Product.id)
# The CSV columns are product_fields()'s (schema.sql): the API's field order and formatting.
_CSV_FIELDS: ColumnElement[Any] = literal_column("(product_fields(products)).*")
# The same, with the free text spreadsheet-safe (app.listing.rendering.spreadsheet_safe, in
# SQL): a cell beginning with one of FORMULA_STARTS gets a ' in front. Literals inline: a
# COPY takes no parameters but the listing's own.
_STARTS_SQL = ", ".join(f"'{c}'" for c in FORMULA_STARTS)


def _spreadsheet_field(name: str) -> ColumnElement[Any]:
    field = f"(product_fields(products)).{name}"
    if name not in FREE_TEXT_FIELDS:
        return literal_column(field)
    safe = f"CASE WHEN left({field}, 1) IN ({_STARTS_SQL}) THEN '''' || {field} ELSE {field} END"
    return literal_column(safe).label(name)


_SPREADSHEET_FIELDS = tuple(_spreadsheet_field(name) for name in CSV_FIELDS)

# GET /products?q=: a search term's length in characters (docs/api.md: 1-100).
SEARCH_MAX = 100
# A search term's trigram: three word characters in a row (pg_trgm indexes runs of letters
# and digits). A term without one cannot narrow the GIN indexes, whatever its length.
_TRIGRAM = re.compile(r"[^\W_]{3}")
# How many products, in list order and past the other filters, one page of a search without
# a trigram examines at most. Each page stays a few milliseconds on any table; a page may
# then hold fewer than `limit` products (even none) and still link to the next.
SCAN_BUDGET = 10_000
# Past every real position: the upper bound of a scan window that reached the end.
_END_AT = datetime.fromisoformat("9999-12-31T23:59:59+00:00")
_END_ID = 2**63 - 1


def prefix_range(prefix: str) -> tuple[str, str]:
    """[low, high) bounds on lower(sku) that hold exactly the SKUs starting with prefix.

    Byte order (text_pattern_ops): every SKU character is ASCII below 0x7f, so bumping the
    last character gives the first string past every extension of the prefix.
    """
    low = prefix.lower()
    return low, low[:-1] + chr(ord(low[-1]) + 1)


def like_pattern(term: str) -> str:
    """A LIKE pattern matching `term` as a literal substring: `\\`, `%` and `_` escaped."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def indexed_search(term: str) -> bool:
    """Whether the trigram indexes can narrow a search for `term` (see _TRIGRAM)."""
    return _TRIGRAM.search(term) is not None


class Row(NamedTuple):
    """A listed product's JSON and its keyset position."""

    json: str
    created_at: datetime
    id: int


class Page(NamedTuple):
    """One page of products and the position after which the next page starts, if any."""

    rows: list[Row]
    next_after: tuple[datetime, int] | None


@dataclass(frozen=True)
class Listing:
    """Which products to list: filters, a keyset position, and a page size (None: all)."""

    # [low, high) bounds on lower(sku) for a SKU prefix (see prefix_range).
    prefix: tuple[str, str] | None = None
    # A literal, case-insensitive substring of the name or the SKU.
    q: str | None = None
    quantity_max: int | None = None
    low_stock: bool = False
    after: tuple[datetime, int] | None = None
    limit: int | None = None

    def _shape(self) -> "_Shape":
        return _Shape(
            prefix=self.prefix is not None,
            search=None if self.q is None else ("trgm" if indexed_search(self.q) else "scan"),
            quantity_max=self.quantity_max is not None,
            low_stock=self.low_stock,
            after=self.after is not None,
        )

    @property
    def scans(self) -> bool:
        """A page that examines at most SCAN_BUDGET products (a search without a trigram)."""
        return self.limit is not None and self._shape().search == "scan"

    def filters_key(self) -> str:
        """A short digest of the filters: a cursor carries it, so that it only continues a
        walk with the same filters (the SKU prefix in lower case, as it is compared)."""
        filters = [self.prefix and self.prefix[0], self.q, self.quantity_max, self.low_stock]
        digest = hashlib.sha256(json.dumps(filters).encode()).digest()
        return base64.urlsafe_b64encode(digest[:9]).decode()

    def params(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.prefix:
            values["low"], values["high"] = self.prefix
        if self.q is not None:
            # Lowered by PostgreSQL (lower() in the statement), as the column is: Python's
            # case mapping differs from the database's for some letters.
            values["term"] = like_pattern(self.q) if indexed_search(self.q) else self.q
        if self.quantity_max is not None:
            values["quantity_max"] = self.quantity_max
        if self.after:
            values["after_at"], values["after_id"] = self.after
        if self.limit is not None:
            values["limit"] = self.limit + 1  # one more: are there more?
            if self.scans:
                values["window_offset"] = SCAN_BUDGET - 1
                values["end_at"], values["end_id"] = _END_AT, _END_ID
        return values

    def page(self) -> Statement:
        """Up to limit + 1 rows of (product JSON, created_at, id, window end?), in list
        order; a scanning page adds the last position it may examine (window end true)."""
        shape = self._shape()
        return _scan_page(shape) if self.scans else _page(shape)

    def export(self, csv: bool, *, for_spreadsheet: bool = False) -> sql.Composed:
        """A COPY ... TO STDOUT of every matching product: CSV with a header (its free text
        spreadsheet-safe `for_spreadsheet`), or JSON rows.

        Run with `params()`: the statement holds no other parameter.
        """
        return _export(self._shape(), csv, csv and for_spreadsheet)

    def stream(self, csv: bool, *, for_spreadsheet: bool = False) -> Bound:
        """The export with its parameters, for a response to run."""
        return Bound(self.export(csv, for_spreadsheet=for_spreadsheet), self.params())


class _Shape(NamedTuple):
    """What a listing's statement depends on (not the values): one compiled statement each."""

    prefix: bool
    search: str | None  # "trgm", "scan" or None
    quantity_max: bool
    low_stock: bool
    after: bool


def _search(kind: str) -> ColumnElement[bool]:
    term: BindParameter[str] = bindparam("term")
    name, sku = func.lower(Product.name), func.lower(Product.sku)
    if kind == "trgm":
        # `lower(name) LIKE lower(:term)`: what products_name_trgm_idx and products_sku_trgm_idx
        # answer (LIKE's escape character is the backslash like_pattern uses).
        return or_(name.like(func.lower(term)), sku.like(func.lower(term)))
    # No trigram to look up: strpos() is the same literal substring test, and no plan can
    # turn it into a scan of a whole GIN index.
    found: ColumnElement[int] = literal_column("0")
    return or_(
        func.strpos(name, func.lower(term)) > found, func.strpos(sku, func.lower(term)) > found
    )


def _filters(shape: _Shape, *, search: bool = True) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if shape.prefix:
        # A range rather than LIKE: `_` is both a SKU character and a LIKE wildcard, and
        # `~>=~`/`~<~` are the operators of the text_pattern_ops index products_sku_lower_key.
        sku = func.lower(Product.sku)
        conditions += [sku.op("~>=~")(bindparam("low")), sku.op("~<~")(bindparam("high"))]
    if shape.search and search:
        conditions.append(_search(shape.search))
    if shape.quantity_max:
        conditions.append(Product.quantity <= bindparam("quantity_max", type_=BigInteger))
    if shape.low_stock:
        # Exactly the predicate of the partial index products_low_stock_idx.
        conditions.append(Product.available <= Product.reorder_point)
    if shape.after:
        conditions.append(tuple_(*_ORDER) > tuple_(bindparam("after_at"), bindparam("after_id")))
    return conditions


def _filtered(query: _Query, shape: _Shape) -> _Query:
    return query.where(*_filters(shape)).order_by(*_ORDER)


@cache
def _page(shape: _Shape) -> Statement:
    query = select(PRODUCT_JSON, Product.created_at, Product.id, false().label("window_end"))
    return compile_once(_filtered(query, shape).limit(bindparam("limit")))


@cache
def _scan_page(shape: _Shape) -> Statement:
    # The window: the next `budget` products in list order that pass every filter but the
    # search. Its last position bounds the page's scan and is returned, so that the next
    # page starts past it even when no product in it matched.
    window_end = (
        select(*_ORDER)
        .where(*_filters(shape, search=False))
        .order_by(*_ORDER)
        .offset(bindparam("window_offset"))
        .limit(literal_column("1"))
        .cte("window_end")
    )
    end_at = func.coalesce(
        select(window_end.c.created_at).scalar_subquery(),
        bindparam("end_at", type_=DateTime(timezone=True)),
    )
    end_id = func.coalesce(select(window_end.c.id).scalar_subquery(), bindparam("end_id"))
    hits = (
        _filtered(select(PRODUCT_JSON, Product.created_at, Product.id, false()), shape)
        .where(tuple_(*_ORDER) <= tuple_(end_at, end_id))
        .limit(bindparam("limit"))
        .subquery("hits")
    )
    end = select(cast(null(), Text), window_end.c.created_at, window_end.c.id, true())
    return compile_once(union_all(select(hits), end))


@cache
def _export(shape: _Shape, csv: bool, for_spreadsheet: bool) -> sql.Composed:
    columns = _SPREADSHEET_FIELDS if for_spreadsheet else (_CSV_FIELDS,) if csv else (PRODUCT_JSON,)
    inner = compile_once(_filtered(select(*columns).select_from(Product), shape))
    return sql.SQL(COPY_CSV if csv else COPY_JSON_ROWS).format(sql.SQL(inner.sql))


async def page(db: Database, listing: Listing) -> Page:
    """One page (at most `limit` products) and where the next one starts, if anything may
    follow."""
    assert listing.limit is not None
    statement = listing.page()
    # Selectivity decides the plan: a rare prefix or term -> its index, a common one -> walk
    # the (created_at, id) index. A prepared statement's generic plan cannot see the values
    # (nor a search pattern's trigrams) and settles on one plan for all; unprepared, every
    # run is planned with its values.
    shape = listing._shape()
    prepare = False if (shape.prefix or shape.search or shape.quantity_max) else None
    async with db.connection() as conn:
        cur = await conn.execute(
            statement.sql, statement.params(**listing.params()), prepare=prepare
        )
        fetched = await cur.fetchall()
    rows = [Row(json, at, id_) for json, at, id_, end in fetched if not end]
    if listing.scans:
        # A union: its rows come in no promised order (a plain page's come sorted).
        rows.sort(key=lambda row: (row.created_at, row.id))
    window_end = next(((at, id_) for _, at, id_, end in fetched if end), None)
    if len(rows) > listing.limit:
        rows = rows[: listing.limit]
        return Page(rows, (rows[-1].created_at, rows[-1].id))
    # A scanning page whose window was full: products past it may still match.
    return Page(rows, window_end)

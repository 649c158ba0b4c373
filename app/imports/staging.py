"""The staging table of an import: records COPYed in as text, numbered, then written into
products by a few set-wise statements (or, for a valid CSV of new products, COPYed into
products directly)."""

from collections.abc import AsyncIterator
from typing import IO, Any, Literal, NamedTuple

import psycopg
from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Identity,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    any_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql import Insert, Select

from app.database import Connection, compile_once, savepoint
from app.imports.parsing import (
    LOCATION_FIELD,
    STAGED_FIELDS,
    CsvRecords,
    EndMarkerGuard,
    bad_line,
    then,
    unreadable,
)
from app.models import MAIN_LOCATION, MAIN_LOCATION_ID, Product, ProductStock, StockMovement
from app.products.queries import CREATE_FIELDS
from app.rules import INT4_MAX, INT4_MIN

# What to do with a record whose SKU (in any case) is a product's already.
OnConflict = Literal["error", "skip", "update"]


COLUMNS = {name: Product.__table__.c[name] for name in CREATE_FIELDS}


# NOT NULL without a default: every record that creates a product must give these.
REQUIRED = frozenset(
    name for name, c in COLUMNS.items() if not c.nullable and c.server_default is None
)


# An update changes these; the SKU names the product (and keeps the case first given).
UPDATE_FIELDS = tuple(name for name in CREATE_FIELDS if name != "sku")
# A stock count's movements: one per changed quantity, so the ledger still adds up.
COUNT_REASON, COUNT_NOTE = "correction", "import"


class Imported(NamedTuple):
    """What an import did: products created, products changed, records that changed nothing."""

    created: int
    updated: int
    unchanged: int


# The staging table: the record number, every field as text (so that COPY takes any record
# and the diagnosis can say what is wrong with each), and the fields an NDJSON record gave
# (NULL for CSV, whose header says it for every record).
import_rows = Table(
    "import_rows",
    MetaData(),
    Column("n", BigInteger, Identity(always=False), nullable=False),
    *(Column(name, Text) for name in STAGED_FIELDS),
    Column("given", ARRAY(Text)),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)


_CREATE_STAGING = compile_once(CreateTable(import_rows)).sql


# Text that PostgreSQL's numeric and integer input will take (checked before casting, so a
# diagnosis never fails on the value it is diagnosing). Type syntax, not a CHECK rule.
NUMBER = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?\s*$"


INTEGER = r"^\s*[+-]?[0-9]{1,18}\s*$"


def typed(name: str) -> ColumnElement[Any]:
    """A staging column as the real column's type; NULL (never an error) when it cannot be.

    Nested CASEs rather than AND: SQL does not promise to evaluate AND left to right.
    """
    text = import_rows.c[name]
    kind = COLUMNS[name].type
    if isinstance(kind, Numeric):
        return case((text.regexp_match(NUMBER), cast(text, Numeric)))
    if isinstance(kind, Integer):
        wide = cast(text, BigInteger)
        return case(
            (
                text.regexp_match(INTEGER),
                case((wide.between(INT4_MIN, INT4_MAX), cast(text, Integer))),
            )
        )
    return text


# A record names an existing product (its SKU in any case).
same_sku = func.lower(Product.sku) == func.lower(import_rows.c.sku)


_exists = exists().where(same_sku)


# The header's columns, what every CSV record gives (its `given` is NULL).
_HEADER = bindparam("columns", type_=ARRAY(Text))


def _given(name: str, header: ColumnElement[Any] = _HEADER) -> ColumnElement[bool]:
    """Whether a record gives the field (a CSV header column, an NDJSON key)."""
    return literal(name) == any_(func.coalesce(import_rows.c.given, header))


def _new_value(name: str) -> ColumnElement[Any]:
    """An updated product's value: the record's, or the product's own where not given."""
    value = cast(import_rows.c[name], COLUMNS[name].type)
    return case((_given(name), value), else_=Product.__table__.c[name])


def _stored(name: str) -> ColumnElement[Any]:
    """What the INSERT stores: the typed value, or the column's default when absent."""
    value = cast(import_rows.c[name], COLUMNS[name].type)
    default = COLUMNS[name].server_default
    return func.coalesce(value, default.arg) if default is not None else value


# File order is kept: ids and the list order follow the lines of the file.
_new = select(*(_stored(name) for name in CREATE_FIELDS)).order_by(import_rows.c.n)


_INSERT = compile_once(insert(Product).from_select(list(CREATE_FIELDS), _new))


_INSERT_NEW = compile_once(insert(Product).from_select(list(CREATE_FIELDS), _new.where(~_exists)))


_COUNT = compile_once(select(func.count()).select_from(import_rows))


ANY_LOCATED = compile_once(select(exists().where(import_rows.c[LOCATION_FIELD].is_not(None))))


# A record that changes its product (a field it gives differs).
EDITS = or_(*(Product.__table__.c[n].is_distinct_from(_new_value(n)) for n in UPDATE_FIELDS))


# --- on_conflict=update: one statement, so a count's quantity and its movement go together.
# The products to change, locked in id order (concurrent imports cannot deadlock), read as
# they are once locked: the movement's delta is against the total the count replaces.
_changed = (
    select(
        Product.id,
        Product.quantity.label("old_quantity"),
        *(_new_value(name).label(name) for name in UPDATE_FIELDS),
    )
    .join_from(import_rows, Product, same_sku)
    # Records identical to their product change nothing, not even updated_at.
    .where(EDITS)
    .order_by(Product.id)
    .with_for_update(of=Product)
    .cte("changed")
)
# A count without a location column is of the product's total: MAIN takes the difference.
# Its stock rows, locked in the same order; a movement's quantity_after starts from them.
_recounted = _changed.c.quantity.is_distinct_from(_changed.c.old_quantity)
_main = (
    select(ProductStock.product_id, ProductStock.quantity)
    .join(_changed, _changed.c.id == ProductStock.product_id)
    .where(ProductStock.location_id == MAIN_LOCATION_ID, _recounted)
    .order_by(ProductStock.product_id)
    .with_for_update(of=ProductStock)
    .cte("main")
)
# The fields other than the quantity, which only the ledger moves.
_EDITED = tuple(name for name in UPDATE_FIELDS if name != "quantity")


_updated = (
    update(Product)
    .where(
        Product.id == _changed.c.id,
        or_(*(Product.__table__.c[n].is_distinct_from(_changed.c[n]) for n in _EDITED)),
    )
    .values({name: _changed.c[name] for name in _EDITED})
    .returning(Product.id)
    .cte("updated")
)


# Before a count: the holds on the file's products that are past their expiry end now, so
# that no count is refused for units only they held (the sweep may not have reached them).
EXPIRE_HELD = compile_once(
    select(
        func.reservations_expire_for(
            select(func.array_agg(Product.id))
            .join_from(import_rows, Product, same_sku)
            .where(Product.reserved > 0)
            .scalar_subquery()
        )
    )
)


def count_movements(moves: Select[Any]) -> Insert:
    """A stock count's movements, one per changed quantity: `moves` selects (product id,
    location code, delta, quantity after)."""
    product_id, location, delta, after = moves.selected_columns
    return insert(StockMovement).from_select(
        ["product_id", "location", "delta", "reason", "note", "quantity_after"],
        moves.with_only_columns(
            product_id, location, delta, literal(COUNT_REASON), literal(COUNT_NOTE), after,
            maintain_column_froms=True,
        ),
    )  # fmt: skip


_counted = count_movements(
    select(
        _changed.c.id,
        literal(MAIN_LOCATION),
        _changed.c.quantity - _changed.c.old_quantity,
        _main.c.quantity + _changed.c.quantity - _changed.c.old_quantity,
    )
    # Outer: a record that gives no quantity (NULL) fails on the movement's NOT NULL, so
    # the diagnosis names it, as it does every other value a product cannot take.
    .join_from(_changed, _main, _main.c.product_id == _changed.c.id, isouter=True)
    .where(_recounted)
).cte("counted")
# (edited, updated, matched): products whose fields changed, products changed at all, and
# records naming an existing product. The edits are counted first, so each product is locked
# as the statement reaches it, after the edits of those before it: what a count changes is
# read once its lock is held, whatever committed since the statement began.
_UPDATE = compile_once(
    select(
        select(func.count()).select_from(_updated).scalar_subquery(),
        select(func.count()).select_from(_changed).scalar_subquery(),
        select(func.count()).select_from(import_rows).where(_exists).scalar_subquery(),
    )
    .add_cte(_updated)
    .add_cte(_counted)
)
# Before the count: a MAIN stock row (empty) for each product whose total the file changes
# and that never had stock there, so that the statement above finds one to lock.
_typed_quantity = typed("quantity")
_STOCK_MAIN = compile_once(
    pg_insert(ProductStock)
    .from_select(
        ["product_id", "location_id"],
        select(Product.id, literal(MAIN_LOCATION_ID))
        .join_from(import_rows, Product, same_sku)
        .where(
            _given("quantity"),
            _typed_quantity.is_not(None),
            _typed_quantity != Product.quantity,
        ),
    )
    .on_conflict_do_nothing()
)


# NDJSON: each line into one text column, untouched (CSV format with a quote and delimiter
# JSON never holds raw: text format would unescape backslashes).
_NDJSON_STAGING = """
    CREATE TEMPORARY TABLE import_lines (
        n    bigint GENERATED ALWAYS AS IDENTITY,
        line text
    ) ON COMMIT DROP
"""


_NDJSON_COPY = (
    "COPY import_lines (line) FROM STDIN (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"
)


# Blank lines are allowed and skipped (they still count as lines).
_NDJSON_PARSE = """
    CREATE TEMPORARY TABLE import_docs ON COMMIT DROP AS
    SELECT n, line::jsonb AS doc FROM import_lines WHERE line ~ '\\S'
"""


_FROM_DOCS = f"""
    INSERT INTO import_rows (n, {", ".join((*CREATE_FIELDS, LOCATION_FIELD))}, given)
    SELECT n, {", ".join(f"doc ->> '{f}'" for f in (*CREATE_FIELDS, LOCATION_FIELD))}, {{given}}
    FROM import_docs
"""


# The keys a record gives, where an update needs them: a key left out keeps its field.
_FROM_DOCS_GIVEN = _FROM_DOCS.format(given="ARRAY(SELECT jsonb_object_keys(doc))")


_FROM_DOCS_NEW = _FROM_DOCS.format(given="NULL")


# The staged records meet products by lower(sku), once per record. Right after a VACUUM the
# planner prices a probe of the trigram index (products_sku_trgm_idx) for that equality at
# almost nothing, and chooses it over the unique index; but SKUs sharing a prefix share
# their trigrams, so each probe reads posting lists as long as the table: milliseconds per
# record, minutes for a stock count. Without bitmap scans the join hashes or probes the
# unique index. Nothing an import runs wants a bitmap scan.
NO_BITMAP_SCANS = "SET LOCAL enable_bitmapscan = off"


async def write(conn: Connection, on_conflict: OnConflict, columns: list[str]) -> Imported:
    if on_conflict == "error":
        created = (await conn.execute(_INSERT.sql)).rowcount
        return Imported(created, 0, 0)
    if on_conflict == "skip":
        total = await (await conn.execute(_COUNT.sql)).fetchone()
        created = (await conn.execute(_INSERT_NEW.sql)).rowcount
        assert total is not None
        return Imported(created, 0, int(total[0]) - created)
    await conn.execute(EXPIRE_HELD.sql, EXPIRE_HELD.params())
    await conn.execute(_STOCK_MAIN.sql, _STOCK_MAIN.params(columns=columns))
    cur = await conn.execute(_UPDATE.sql, _UPDATE.params(columns=columns))
    counts = await cur.fetchone()
    assert counts is not None
    _, updated, matched = (int(c) for c in counts)
    created = (await conn.execute(_INSERT_NEW.sql)).rowcount
    return Imported(created, updated, matched - updated)


def _copy_sql(table: str, columns: list[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


async def copy_direct(
    conn: Connection,
    head: bytes,
    stream: AsyncIterator[bytes],
    columns: list[str],
    spooled: IO[bytes],
) -> int | None:
    """COPY the CSV straight into products; the number of products created, or None when
    the database refused the file (nothing written; the whole body is then in `spooled`).

    A valid file - the usual case - is read and written once, at COPY's own speed: no
    staging table, no INSERT ... SELECT. The table's types, CHECKs, unique index and
    triggers apply as to any INSERT. Where they refuse a record, the savepoint undoes the
    attempt and the caller replays the spooled body through staging, which names the lines.
    """
    guard = EndMarkerGuard()
    cur = conn.cursor()
    try:
        async with savepoint(conn), cur.copy(_copy_sql("products", columns)) as copy:
            async for chunk in then(head, stream):
                guard.check(chunk)
                spooled.write(chunk)
                await copy.write(chunk)
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
        # COPY reports the first bad record only at its end, so the body is all spooled by
        # now; whatever was not (an error raised midway) is taken here.
        async for chunk in stream:
            spooled.write(chunk)
        return None
    return cur.rowcount


async def copy_csv(conn: Connection, body: AsyncIterator[bytes], columns: list[str]) -> None:
    await conn.execute(_CREATE_STAGING)
    guard = EndMarkerGuard()
    records = CsvRecords()
    try:
        async with conn.cursor().copy(_copy_sql("import_rows", columns)) as copy:
            async for chunk in body:
                guard.check(chunk)
                records.feed(chunk)
                await copy.write(chunk)
    except psycopg.errors.DataError as exc:
        raise unreadable(exc, "CSV", unclosed=records.unclosed()) from None


async def copy_ndjson(conn: Connection, body: AsyncIterator[bytes]) -> None:
    await conn.execute(_NDJSON_STAGING)
    guard = EndMarkerGuard()
    carry = b""
    try:
        async with conn.cursor().copy(_NDJSON_COPY) as copy:
            async for data in body:
                # COPY wants one line ending style; CRLF and LF may mix in NDJSON. A CR
                # split from its LF by the chunking waits for the next chunk.
                chunk = (carry + data).replace(b"\r\n", b"\n")
                carry = b"\r" if chunk.endswith(b"\r") else b""
                chunk = chunk[: len(chunk) - len(carry)]
                # Our quote and delimiter bytes would change how COPY splits the line;
                # JSON never holds them raw, so such a body is not NDJSON.
                raw = [at for at in (chunk.find(b"\x01"), chunk.find(b"\x02")) if at >= 0]
                if raw:
                    raise bad_line(
                        guard.lines + chunk[: min(raw)].count(b"\n") + 1,
                        "holds a raw control character (not valid JSON)",
                    )
                guard.check(chunk)
                await copy.write(chunk)
            await copy.write(carry)
    except psycopg.errors.DataError as exc:
        raise unreadable(exc, "NDJSON") from None


async def parse_ndjson(conn: Connection) -> None:
    """Each staged line as a JSON document; raises DataError when one is not JSON."""
    await conn.execute(_CREATE_STAGING)
    async with savepoint(conn):
        await conn.execute(_NDJSON_PARSE)


async def stage_docs(conn: Connection, *, given: bool) -> None:
    """The documents into the staging table, with the fields each gave when `given`."""
    await conn.execute(_FROM_DOCS_GIVEN if given else _FROM_DOCS_NEW)

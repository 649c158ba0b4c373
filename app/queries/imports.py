"""POST /products/import: a CSV or NDJSON body streamed through COPY, all or nothing.

The body goes straight from the socket into `COPY ... FROM STDIN`, inside the caller's
transaction. A CSV import of new products (`error`, the default) is first COPYed into
products itself, in a savepoint, the body spooled on the way: a valid file is read and
written once. Otherwise - or when that attempt fails - the body goes into a temporary
staging table that numbers the records, and a few set-wise statements - one INSERT ...
SELECT by default - write it, where the table's CHECKs and its unique index decide, as for
every other client. Records whose SKU exists are refused (`error`), left alone (`skip`) or
written over (`update`, a stock count when the file has quantities: each changed quantity
gets its `correction` movement). Only when a statement fails does the diagnosis run:
set-wise queries over the staging table that name up to MAX_LISTED bad records by line,
validation problems (422) before existing SKUs (409). The rules it applies are the
database's own: the required columns and types come from the model, the CHECK expressions
from the live catalog (pg_constraint), never from a second copy. Nothing is written unless
everything is.
"""

import csv
import hashlib
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import cache
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
    and_,
    any_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.schema import CreateTable

from app.changes import queries as changes
from app.database import Connection, compile_literal, compile_once, savepoint
from app.errors import DuplicateSku, ValidationFailed, field_error
from app.models import MAIN_LOCATION, MAIN_LOCATION_ID, Product, ProductStock, StockMovement
from app.queries.products import CREATE_FIELDS
from app.rules import INT4_MAX, INT4_MIN, rule_for

MAX_LISTED = 100
CSV = "text/csv"
NDJSON = "application/x-ndjson"

# What to do with a record whose SKU (in any case) is a product's already.
OnConflict = Literal["error", "skip", "update"]

_COLUMNS = {name: Product.__table__.c[name] for name in CREATE_FIELDS}
# NOT NULL without a default: every record that creates a product must give these.
REQUIRED = frozenset(
    name for name, c in _COLUMNS.items() if not c.nullable and c.server_default is None
)
# An update changes these; the SKU names the product (and keeps the case first given).
UPDATE_FIELDS = tuple(name for name in CREATE_FIELDS if name != "sku")
# Columns of an export that clients never set: accepted and ignored, so that what
# GET /products exports (CSV or NDJSON) imports back as it is.
IGNORED_FIELDS = ("id", "reserved", "available", "created_at", "updated_at")
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
_staging = Table(
    "import_rows",
    MetaData(),
    Column("n", BigInteger, Identity(always=False), nullable=False),
    *(Column(name, Text) for name in (*CREATE_FIELDS, *IGNORED_FIELDS)),
    Column("given", ARRAY(Text)),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
_CREATE_STAGING = compile_once(CreateTable(_staging)).sql

# Text that PostgreSQL's numeric and integer input will take (checked before casting, so a
# diagnosis never fails on the value it is diagnosing). Type syntax, not a CHECK rule.
_NUMBER = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?\s*$"
_INTEGER = r"^\s*[+-]?[0-9]{1,18}\s*$"


def _typed(name: str) -> ColumnElement[Any]:
    """A staging column as the real column's type; NULL (never an error) when it cannot be.

    Nested CASEs rather than AND: SQL does not promise to evaluate AND left to right.
    """
    text = _staging.c[name]
    kind = _COLUMNS[name].type
    if isinstance(kind, Numeric):
        return case((text.regexp_match(_NUMBER), cast(text, Numeric)))
    if isinstance(kind, Integer):
        wide = cast(text, BigInteger)
        return case(
            (
                text.regexp_match(_INTEGER),
                case((wide.between(INT4_MIN, INT4_MAX), cast(text, Integer))),
            )
        )
    return text


# A record names an existing product (its SKU in any case).
_same_sku = func.lower(Product.sku) == func.lower(_staging.c.sku)
_exists = exists().where(_same_sku)
# The header's columns, what every CSV record gives (its `given` is NULL).
_HEADER = bindparam("columns", type_=ARRAY(Text))


def _given(name: str, header: ColumnElement[Any] = _HEADER) -> ColumnElement[bool]:
    """Whether a record gives the field (a CSV header column, an NDJSON key)."""
    return literal(name) == any_(func.coalesce(_staging.c.given, header))


def _new_value(name: str) -> ColumnElement[Any]:
    """An updated product's value: the record's, or the product's own where not given."""
    value = cast(_staging.c[name], _COLUMNS[name].type)
    return case((_given(name), value), else_=Product.__table__.c[name])


def _type_problem(
    name: str, on_conflict: OnConflict, header: ColumnElement[Any]
) -> ColumnElement[Any] | None:
    """Why a staging value cannot be stored in its column at all, or NULL."""
    text = _staging.c[name]
    kind = _COLUMNS[name].type
    whens: list[tuple[ColumnElement[bool], str]] = []
    # Missing where NULL would be written: a NOT NULL column of a product being created
    # (unless it has a default), or one a record updating a product gives.
    creates = true() if on_conflict == "error" else ~_exists
    updates = _exists if on_conflict == "update" else false()
    given = _given(name, header)
    if name == "sku" or name in REQUIRED:
        whens.append((and_(text.is_(None), or_(creates, and_(updates, given))), "required"))
    elif not _COLUMNS[name].nullable:
        whens.append((and_(text.is_(None), updates, given), "required"))
    if isinstance(kind, Numeric):
        whens.append((~text.regexp_match(_NUMBER), "not_a_number"))
    elif isinstance(kind, Integer):
        whens.append((~text.regexp_match(_INTEGER), "not_an_integer"))
        whens.append((~cast(text, BigInteger).between(INT4_MIN, INT4_MAX), "out_of_range"))
    return case(*whens) if whens else None


def _stored(name: str) -> ColumnElement[Any]:
    """What the INSERT stores: the typed value, or the column's default when absent."""
    value = cast(_staging.c[name], _COLUMNS[name].type)
    default = _COLUMNS[name].server_default
    return func.coalesce(value, default.arg) if default is not None else value


# File order is kept: ids and the list order follow the lines of the file.
_new = select(*(_stored(name) for name in CREATE_FIELDS)).order_by(_staging.c.n)
_INSERT = compile_once(insert(Product).from_select(list(CREATE_FIELDS), _new))
_INSERT_NEW = compile_once(insert(Product).from_select(list(CREATE_FIELDS), _new.where(~_exists)))
_COUNT = compile_once(select(func.count()).select_from(_staging))

# --- on_conflict=update: one statement, so a count's quantity and its movement go together.
# The products to change, locked in id order (concurrent imports cannot deadlock), read as
# they are once locked: the movement's delta is against the total the count replaces.
_changed = (
    select(
        Product.id,
        Product.quantity.label("old_quantity"),
        *(_new_value(name).label(name) for name in UPDATE_FIELDS),
    )
    .join_from(_staging, Product, _same_sku)
    # Records identical to their product change nothing, not even updated_at.
    .where(or_(*(Product.__table__.c[n].is_distinct_from(_new_value(n)) for n in UPDATE_FIELDS)))
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
_counted = (
    insert(StockMovement)
    .from_select(
        ["product_id", "location", "delta", "reason", "note", "quantity_after"],
        select(
            _changed.c.id,
            literal(MAIN_LOCATION),
            _changed.c.quantity - _changed.c.old_quantity,
            literal(COUNT_REASON),
            literal(COUNT_NOTE),
            _main.c.quantity + _changed.c.quantity - _changed.c.old_quantity,
        )
        # Outer: a record that gives no quantity (NULL) fails on the movement's NOT NULL, so
        # the diagnosis names it, as it does every other value a product cannot take.
        .join_from(_changed, _main, _main.c.product_id == _changed.c.id, isouter=True)
        .where(_recounted),
    )
    .cte("counted")
)
# (edited, updated, matched): products whose fields changed, products changed at all, and
# records naming an existing product. The edits are counted first, so each product is locked
# as the statement reaches it, after the edits of those before it: what a count changes is
# read once its lock is held, whatever committed since the statement began.
_UPDATE = compile_once(
    select(
        select(func.count()).select_from(_updated).scalar_subquery(),
        select(func.count()).select_from(_changed).scalar_subquery(),
        select(func.count()).select_from(_staging).where(_exists).scalar_subquery(),
    )
    .add_cte(_updated)
    .add_cte(_counted)
)
# Before the count: a MAIN stock row (empty) for each product whose total the file changes
# and that never had stock there, so that the statement above finds one to lock.
_typed_quantity = _typed("quantity")
_STOCK_MAIN = compile_once(
    pg_insert(ProductStock)
    .from_select(
        ["product_id", "location_id"],
        select(Product.id, literal(MAIN_LOCATION_ID))
        .join_from(_staging, Product, _same_sku)
        .where(
            _given("quantity"),
            _typed_quantity.is_not(None),
            _typed_quantity != Product.quantity,
        ),
    )
    .on_conflict_do_nothing()
)


@cache
def _typed_rows(on_conflict: OnConflict) -> str:
    """Every field's typed value of the records the write used, as a relation the catalog's
    CHECK expressions can be run on (`skip` leaves records of existing products unread)."""
    query = select(_staging.c.n, *(_typed(name).label(name) for name in CREATE_FIELDS))
    return compile_literal(query.where(~_exists) if on_conflict == "skip" else query)


def _type_problems(on_conflict: OnConflict, columns: list[str]) -> str:
    """Values no column of their type can hold: one row per (record, field, problem).

    Compiled per failed import, with the CSV header's columns written into it.
    """
    header = cast(array([literal(c) for c in columns] or [literal("")]), ARRAY(Text))
    return " UNION ALL ".join(
        compile_literal(
            select(_staging.c.n, literal(name), problem.label("problem")).where(
                problem.is_not(None), ~_exists if on_conflict == "skip" else true()
            )
        )
        for name in CREATE_FIELDS
        if (problem := _type_problem(name, on_conflict, header)) is not None
    )


# The rules on what a record gives (not those on totals only the ledger writes, reserved).
_CHECKS = f"""
    SELECT conname, pg_get_expr(conbin, conrelid) FROM pg_constraint c
    WHERE conrelid = 'products'::regclass AND contype = 'c'
      AND NOT EXISTS (SELECT FROM pg_attribute a
                      WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
                        AND a.attname <> ALL (ARRAY[{", ".join(f"'{f}'" for f in CREATE_FIELDS)}]))
    ORDER BY conname
"""
# Records that repeat an earlier record's SKU (any case): always a 422, whatever on_conflict.
_sku = func.lower(_staging.c.sku)
_first = func.min(_staging.c.n).over(partition_by=_sku)
_repeats = select(_staging.c.n, _first.label("first")).subquery()
_REPEATED = compile_literal(
    select(_repeats.c.n, literal("sku"), literal("file:") + cast(_repeats.c.first, Text)).where(
        _repeats.c.n > _repeats.c.first
    )
)
_ANY_REPEATED = compile_once(select(exists(select(_sku).group_by(_sku).having(func.count() > 1))))
# Records whose SKU exists (on_conflict=error: 409).
_EXISTING = compile_literal(
    select(_staging.c.n, literal("sku"), literal("exists:") + Product.sku).join(Product, _same_sku)
)

# The first MAX_LISTED offending records, all their problems, and how many records offend.
_LISTED = """
    WITH bad (n, field, problem) AS MATERIALIZED ({rows})
    SELECT n, field, problem, (SELECT count(DISTINCT n) FROM bad)
    FROM bad
    WHERE n IN (SELECT DISTINCT n FROM bad ORDER BY n LIMIT {limit})
    ORDER BY n, field
"""

# A CSV record can span lines (quoted newlines): its first line is 1 (the header) plus the
# records before it plus every newline inside them.
_CSV_LINES = f"""
    SELECT n, line FROM (
        SELECT n, (1 + n + coalesce(sum(newlines) OVER (
            ORDER BY n ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0))::bigint AS line
        FROM (
            SELECT n, (SELECT coalesce(sum(length(v) - length(replace(v, e'\\n', ''))), 0)
                       FROM unnest(ARRAY[{", ".join((*CREATE_FIELDS, *IGNORED_FIELDS))}]) v
                      ) AS newlines
            FROM import_rows
        ) r
    ) x WHERE n = ANY(%s)
"""

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
# Only on the failure path: a per-row exception block is slow but finds every bad line.
_IS_JSON = """
    CREATE OR REPLACE FUNCTION pg_temp.import_is_json(t text) RETURNS boolean
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM t::jsonb;
        RETURN true;
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
        RETURN false;
    END $$
"""
_INVALID_JSON = """
    SELECT n, 'line', 'invalid_json' FROM import_lines
    WHERE line ~ '\\S' AND NOT pg_temp.import_is_json(line)
"""


def _json_types(name: str) -> tuple[str, ...]:
    """The JSON types a field may have in an NDJSON record, as the API's models take it."""
    column = _COLUMNS[name]
    kinds = (
        ("string", "number")
        if isinstance(column.type, Numeric)
        else (("number",) if isinstance(column.type, Integer) else ("string",))
    )
    return (*kinds, "null") if column.nullable else kinds


_INTEGER_FIELDS = [f for f in CREATE_FIELDS if isinstance(_COLUMNS[f].type, Integer)]
# What the API's strict models refuse: not an object, unknown keys, wrong JSON types.
_WRONG_SHAPE = f"""
    SELECT d.n, e.field, e.problem
    FROM import_docs d CROSS JOIN LATERAL (
        SELECT 'line' AS field, 'not_an_object' AS problem WHERE jsonb_typeof(d.doc) <> 'object'
        UNION ALL
        SELECT k, 'unknown_field'
        FROM jsonb_object_keys(CASE jsonb_typeof(d.doc) WHEN 'object' THEN d.doc ELSE '{{}}' END) k
        WHERE k <> ALL (ARRAY[{", ".join(f"'{f}'" for f in (*CREATE_FIELDS, *IGNORED_FIELDS))}])
        UNION ALL
        SELECT f.name, 'wrong_type'
        FROM (VALUES {", ".join(f"('{f}', ARRAY{list(_json_types(f))!r})" for f in CREATE_FIELDS)})
             AS f(name, types)
        WHERE d.doc ? f.name AND jsonb_typeof(d.doc -> f.name) <> ALL (f.types)
        UNION ALL
        SELECT f.name, 'not_an_integer'
        FROM unnest(ARRAY[{", ".join(f"'{f}'" for f in _INTEGER_FIELDS)}]::text[]) f(name)
        WHERE jsonb_typeof(d.doc -> f.name) = 'number' AND d.doc ->> f.name !~ '^-?[0-9]+$'
    ) e
"""
_FROM_DOCS = f"""
    INSERT INTO import_rows (n, {", ".join(CREATE_FIELDS)}, given)
    SELECT n, {", ".join(f"doc ->> '{f}'" for f in CREATE_FIELDS)}, {{given}}
    FROM import_docs
"""
# The keys a record gives, where an update needs them: a key left out keeps its field.
_FROM_DOCS_GIVEN = _FROM_DOCS.format(given="ARRAY(SELECT jsonb_object_keys(doc))")
_FROM_DOCS_NEW = _FROM_DOCS.format(given="NULL")

_MESSAGES = {
    "required": "is required",
    "not_a_number": "must be a decimal number such as 19.99",
    "not_an_integer": "must be a whole number",
    "out_of_range": f"must be at most {INT4_MAX}",
    "wrong_type": "has the wrong JSON type",
    "not_an_object": "must be a JSON object",
    "unknown_field": "is not a known field",
    "invalid_json": "is not valid JSON",
}

_COPY_LINE = re.compile(r"\bline (\d+)")

# The staged records meet products by lower(sku), once per record. Right after a VACUUM the
# planner prices a probe of the trigram index (products_sku_trgm_idx) for that equality at
# almost nothing, and chooses it over the unique index; but SKUs sharing a prefix share
# their trigrams, so each probe reads posting lists as long as the table: milliseconds per
# record, minutes for a stock count. Without bitmap scans the join hashes or probes the
# unique index. Nothing an import runs wants a bitmap scan.
_NO_BITMAP_SCANS = "SET LOCAL enable_bitmapscan = off"

LineNumbers = Callable[[Connection, list[int]], Awaitable[dict[int, int]]]


async def import_products(
    conn: Connection,
    body: AsyncIterator[bytes],
    *,
    media_type: str,
    on_conflict: OnConflict = "error",
) -> Imported:
    """Import every record of a CSV or NDJSON body, or none; say what was done.

    Runs inside the caller's transaction on `conn`. Records whose SKU exists are refused
    (`error`: DuplicateSku listing them), left as they are (`skip`), or written over
    (`update`: the fields the record gives; a changed quantity gets one `correction`
    movement with note `import`). Raises ValidationFailed (unreadable or invalid records,
    unknown or missing columns, a SKU twice in the file), listing at most MAX_LISTED
    records by line.
    """
    # Its statements may write millions of rows: their events are logged set-wise.
    await changes.log_in_bulk(conn)
    await conn.execute(_NO_BITMAP_SCANS)
    if media_type != CSV:
        await _copy_ndjson(conn, body, given=on_conflict == "update")
        return await _staged_write(conn, on_conflict, [], _ndjson_lines)
    stream = aiter(body)
    head = await _head(stream)
    # Every record of an `error` import creates a product; otherwise only new SKUs do, and
    # a file naming existing products (a stock count: sku,quantity) needs no more columns.
    columns = _csv_header(head, REQUIRED if on_conflict == "error" else frozenset({"sku"}))
    if on_conflict != "error" or not set(columns) <= set(CREATE_FIELDS):
        # skip/update are chosen for files that name existing products, where COPY into
        # the table fails; ignored columns cannot be left out of a COPY.
        await _copy_csv(conn, _then(head, stream), columns)
        return await _staged_write(conn, on_conflict, columns, _csv_lines)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spooled:
        created = await _copy_direct(conn, head, stream, columns, spooled)
        if created is not None:
            return Imported(created, 0, 0)
        # Something in the file is wrong: the staging table and the diagnosis say what.
        await _copy_csv(conn, unspool(spooled), columns)
    return await _staged_write(conn, on_conflict, columns, _csv_lines)


async def _staged_write(
    conn: Connection, on_conflict: OnConflict, columns: list[str], line_of: LineNumbers
) -> Imported:
    """The staged records into products, set-wise; on failure the diagnosis names them."""
    if on_conflict != "error":
        # Without one INSERT of every record, the unique index no longer sees them all.
        cur = await conn.execute(_ANY_REPEATED.sql, _ANY_REPEATED.params())
        repeated = await cur.fetchone()
        if repeated and repeated[0]:
            await _report(conn, _REPEATED, line_of, existing=False)
    try:
        async with savepoint(conn):
            return await _write(conn, on_conflict, columns)
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
        await _diagnose(conn, line_of, on_conflict, columns)
        raise


async def _write(conn: Connection, on_conflict: OnConflict, columns: list[str]) -> Imported:
    if on_conflict == "error":
        created = (await conn.execute(_INSERT.sql)).rowcount
        return Imported(created, 0, 0)
    if on_conflict == "skip":
        total = await (await conn.execute(_COUNT.sql)).fetchone()
        created = (await conn.execute(_INSERT_NEW.sql)).rowcount
        assert total is not None
        return Imported(created, 0, int(total[0]) - created)
    await conn.execute(_STOCK_MAIN.sql, _STOCK_MAIN.params(columns=columns))
    cur = await conn.execute(_UPDATE.sql, _UPDATE.params(columns=columns))
    counts = await cur.fetchone()
    assert counts is not None
    _, updated, matched = (int(c) for c in counts)
    created = (await conn.execute(_INSERT_NEW.sql)).rowcount
    return Imported(created, updated, matched - updated)


async def _head(stream: AsyncIterator[bytes]) -> bytes:
    """The body's first bytes, through its header line (or 64 KiB without one)."""
    head = b""
    async for chunk in stream:
        head += chunk
        if b"\n" in head or len(head) > 64 * 1024:
            break
    return head


async def _then(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in rest:
        yield chunk


def _copy_sql(table: str, columns: list[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


async def _copy_direct(
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
    guard = _EndMarkerGuard()
    cur = conn.cursor()
    try:
        async with savepoint(conn), cur.copy(_copy_sql("products", columns)) as copy:
            async for chunk in _then(head, stream):
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


async def _copy_csv(conn: Connection, body: AsyncIterator[bytes], columns: list[str]) -> None:
    await conn.execute(_CREATE_STAGING)
    guard = _EndMarkerGuard()
    records = _CsvRecords()
    try:
        async with conn.cursor().copy(_copy_sql("import_rows", columns)) as copy:
            async for chunk in body:
                guard.check(chunk)
                records.feed(chunk)
                await copy.write(chunk)
    except psycopg.errors.DataError as exc:
        raise _unreadable(exc, "CSV", unclosed=records.unclosed()) from None


def _csv_header(head: bytes, required: frozenset[str]) -> list[str]:
    """The column names of the header line; raises ValidationFailed unless they are usable."""
    line = head.split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r")
    try:
        names = next(csv.reader([line.decode()]), [])
    except (UnicodeDecodeError, csv.Error):
        names = []
    names = [n.strip() for n in names]
    problems = [
        field_error(n or "header", "is not a product field", line=1)
        for n in names
        if n not in CREATE_FIELDS and n not in IGNORED_FIELDS
    ]
    problems += [
        field_error(n, "appears more than once", line=1)
        for n in sorted({n for n in names if names.count(n) > 1})
    ]
    problems += [
        field_error(n, "is a required column", line=1) for n in sorted(required - set(names))
    ]
    if problems:
        raise ValidationFailed(
            "The CSV header must name product fields: "
            + ", ".join(CREATE_FIELDS)
            + " ("
            + ", ".join(sorted(required))
            + " required; "
            + ", ".join(IGNORED_FIELDS)
            + " accepted and ignored).",
            problems,
        )
    return names


async def _copy_ndjson(conn: Connection, body: AsyncIterator[bytes], *, given: bool) -> None:
    await conn.execute(_NDJSON_STAGING)
    guard = _EndMarkerGuard()
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
                    raise _bad_line(
                        guard.lines + chunk[: min(raw)].count(b"\n") + 1,
                        "holds a raw control character (not valid JSON)",
                    )
                guard.check(chunk)
                await copy.write(chunk)
            await copy.write(carry)
    except psycopg.errors.DataError as exc:
        raise _unreadable(exc, "NDJSON") from None
    await conn.execute(_CREATE_STAGING)
    try:
        async with savepoint(conn):
            await conn.execute(_NDJSON_PARSE)
    except psycopg.errors.DataError:
        await conn.execute(_IS_JSON)
        await _report(conn, _INVALID_JSON, _ndjson_lines, existing=False)
        raise
    await _report(conn, _WRONG_SHAPE, _ndjson_lines, existing=False)
    await conn.execute(_FROM_DOCS_GIVEN if given else _FROM_DOCS_NEW)


class _EndMarkerGuard:
    """Refuses a line holding only `\\.`: PostgreSQL 15's COPY would end the data there,
    silently dropping every later line. Counts lines on the way (C speed: bytes.count)."""

    def __init__(self) -> None:
        self.lines = 0
        self._tail = b"\n"

    def check(self, chunk: bytes) -> None:
        window = self._tail + chunk
        for marker in (b"\n\\.\n", b"\n\\.\r\n"):
            at = window.find(marker)
            if at >= 0:
                before = self.lines - self._tail.count(b"\n") + window[: at + 1].count(b"\n")
                raise _bad_line(before + 1, "holds only '\\.', which COPY reads as end of data")
        self.lines += chunk.count(b"\n")
        # The longest marker is 5 bytes: 4 carried over catch one split between chunks.
        self._tail = window[-4:]


class _CsvRecords:
    """Where the record still open at the end of a CSV body began, if one is.

    A quote that is never closed makes COPY read the rest of the body as one field and
    report the line where the body ended, past the culprit. This follows the quotes as
    COPY's CSV reader does (every `"` toggles quoting, so a doubled one inside quotes
    toggles twice; a newline outside quotes ends a record), at C speed per chunk (count,
    rfind); only newlines inside quotes cost a Python step each.
    """

    def __init__(self) -> None:
        self.lines = 0  # newlines fed so far
        self.quoted = False  # inside quotes at the end of what was fed
        self.record_line = 1  # the line where the current record began

    def feed(self, chunk: bytes) -> None:
        quotes = chunk.count(b'"')
        if quotes or not self.quoted:
            # The last newline outside quotes begins the next record. Quoting at a newline
            # is quoting at the chunk's start, toggled by every quote before it.
            end, after = len(chunk), 0
            at = chunk.rfind(b"\n")
            while at >= 0:
                after += chunk.count(b'"', at, end)
                if self.quoted == bool((quotes - after) % 2):
                    self.record_line = self.lines + chunk.count(b"\n", 0, at) + 2
                    break
                end, at = at, chunk.rfind(b"\n", 0, at)
        self.lines += chunk.count(b"\n")
        self.quoted ^= bool(quotes % 2)

    def unclosed(self) -> int | None:
        """The line where the record with a quote never closed begins, or None."""
        return self.record_line if self.quoted else None


def _bad_line(line: int, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"Line {line} cannot be imported.", [field_error("line", message, line=line)]
    )


def _unreadable(exc: psycopg.Error, what: str, *, unclosed: int | None = None) -> ValidationFailed:
    """The problem for a body COPY could not read; `unclosed`: the line where a record with
    a quote never closed begins (COPY then stops at the end of the body, past it)."""
    # COPY reports where it stopped as context "COPY import_rows, line 5[, column ...]".
    found = _COPY_LINE.search(exc.diag.context or "")
    line = int(found.group(1)) if found else None
    message = {
        "22P04": "does not have the header's columns",
        "22021": "is not valid UTF-8",
    }.get(exc.sqlstate or "", f"cannot be read as {what}")
    # A record COPY refused before reaching the unclosed quote keeps COPY's own reason.
    if unclosed is not None and exc.sqlstate == "22P04" and (line is None or line >= unclosed):
        line, message = unclosed, "has an unclosed quote: the record runs to the end of the body"
    return ValidationFailed(
        f"The body cannot be read as {what}" + (f" at line {line}." if line is not None else "."),
        [field_error("line", message, line=line)],
    )


async def _check_violations(conn: Connection, on_conflict: OnConflict) -> str:
    """Records breaking a CHECK of products, evaluated with the catalog's own expressions."""
    checks = await (await conn.execute(_CHECKS)).fetchall()
    cases = ", ".join(
        f"({sql.quote(_field_of(name))}, {sql.quote(name)}, ({expression})::boolean)"
        for name, expression in checks
    )
    # An expression names its columns unqualified; `t` is the only relation that has them.
    return (
        f"SELECT t.n, c.field, c.name FROM ({_typed_rows(on_conflict)}) t CROSS JOIN LATERAL "
        f"(VALUES {cases}) c(field, name, ok) WHERE c.ok IS FALSE"
    )


def _field_of(constraint: str) -> str:
    rule = rule_for(constraint)
    return rule.field if rule else "line"


async def _diagnose(
    conn: Connection, line_of: LineNumbers, on_conflict: OnConflict, columns: list[str]
) -> None:
    """After a failed write: raise the 422 or 409 naming the records at fault, if found."""
    invalid = " UNION ALL ".join(
        [
            _type_problems(on_conflict, columns),
            await _check_violations(conn, on_conflict),
            _REPEATED,
        ]
    )
    await _report(conn, invalid, line_of, existing=False)
    if on_conflict == "error":
        await _report(conn, _EXISTING, line_of, existing=True)


async def _report(conn: Connection, rows_sql: str, line_of: LineNumbers, *, existing: bool) -> None:
    """Raise the problem listing the records that rows_sql finds, if it finds any."""
    cur = await conn.execute(_LISTED.format(rows=rows_sql, limit=MAX_LISTED))
    found = await cur.fetchall()
    if not found:
        return
    total = int(found[0][3])
    earlier = {_earlier(p) for _, _, p, _ in found}
    ns = sorted({int(n) for n, *_ in found} | {n for n in earlier if n is not None})
    lines = await line_of(conn, ns)
    errors = [
        field_error(field, _message(problem, lines), line=lines[n])
        for n, field, problem, _ in found
    ]
    if existing:
        raise DuplicateSku(errors=errors, invalid_records=total)
    raise ValidationFailed(
        f"{total} records are invalid; nothing was imported.", errors, invalid_records=total
    )


def _earlier(problem: str) -> int | None:
    kind, _, value = problem.partition(":")
    return int(value) if kind == "file" else None


def _message(problem: str, lines: dict[int, int]) -> str:
    kind, _, value = problem.partition(":")
    if kind == "file":
        return f"repeats the SKU of line {lines[int(value)]} (SKUs are unique ignoring case)"
    if kind == "exists":
        return f"a product with SKU '{value}' already exists"
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    rule = rule_for(problem)
    return f"{rule.message} ({problem})" if rule else f"violates {problem}"


async def _csv_lines(conn: Connection, ns: list[int]) -> dict[int, int]:
    cur = await conn.execute(_CSV_LINES, (ns,))
    return {n: line for n, line in await cur.fetchall()}


async def _ndjson_lines(conn: Connection, ns: list[int]) -> dict[int, int]:
    return {n: n for n in ns}


SPOOL_CHUNK = 256 * 1024
# A body kept for a second reading: in memory up to this, in a temporary file past it.
SPOOL_MEMORY = 1024 * 1024


async def spool(body: AsyncIterator[bytes], into: IO[bytes]) -> bytes:
    """Copy a body into a file and return its SHA-256."""
    digest = hashlib.sha256()
    async for chunk in body:
        digest.update(chunk)
        into.write(chunk)
    into.seek(0)
    return digest.digest()


async def unspool(source: IO[bytes]) -> AsyncIterator[bytes]:
    """The file's bytes from its start, in chunks."""
    source.seek(0)
    while chunk := source.read(SPOOL_CHUNK):
        yield chunk

"""After a failed import: set-wise queries over the staging table that name up to MAX_LISTED
bad records by line, validation problems (422) before existing SKUs (409), with the rules
the database itself applies (the model's columns, the catalog's CHECK expressions)."""

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from psycopg import sql
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Numeric,
    Text,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, array

from app.core.errors import CountsShort, DuplicateSku, ValidationFailed, field_error
from app.database import Connection, compile_literal, compile_once
from app.imports.parsing import LOCATION_FIELD, STAGED_FIELDS
from app.imports.staging import (
    COLUMNS,
    INTEGER,
    NUMBER,
    REQUIRED,
    OnConflict,
    _exists,
    _given,
    import_rows,
    same_sku,
    typed,
)
from app.models import MAIN_LOCATION_ID, Product, ProductStock
from app.products.queries import CREATE_FIELDS
from app.rules import INT4_MAX, INT4_MIN, rule_for

MAX_LISTED = 100


def _type_problem(
    name: str, on_conflict: OnConflict, header: ColumnElement[Any]
) -> ColumnElement[Any] | None:
    """Why a staging value cannot be stored in its column at all, or NULL."""
    text = import_rows.c[name]
    kind = COLUMNS[name].type
    whens: list[tuple[ColumnElement[bool], str]] = []
    # Missing where NULL would be written: a NOT NULL column of a product being created
    # (unless it has a default), or one a record updating a product gives.
    creates = true() if on_conflict == "error" else ~_exists
    updates = _exists if on_conflict == "update" else false()
    given = _given(name, header)
    if name == "sku" or name in REQUIRED:
        whens.append((and_(text.is_(None), or_(creates, and_(updates, given))), "required"))
    elif not COLUMNS[name].nullable:
        whens.append((and_(text.is_(None), updates, given), "required"))
    if isinstance(kind, Numeric):
        whens.append((~text.regexp_match(NUMBER), "not_a_number"))
    elif isinstance(kind, Integer):
        whens.append((~text.regexp_match(INTEGER), "not_an_integer"))
        whens.append((~cast(text, BigInteger).between(INT4_MIN, INT4_MAX), "out_of_range"))
    return case(*whens) if whens else None


@cache
def _typed_rows(on_conflict: OnConflict) -> str:
    """Every field's typed value of the records the write used, as a relation the catalog's
    CHECK expressions can be run on (`skip` leaves records of existing products unread)."""
    query = select(import_rows.c.n, *(typed(name).label(name) for name in CREATE_FIELDS))
    return compile_literal(query.where(~_exists) if on_conflict == "skip" else query)


def _type_problems(on_conflict: OnConflict, columns: list[str]) -> str:
    """Values no column of their type can hold: one row per (record, field, problem).

    Compiled per failed import, with the CSV header's columns written into it.
    """
    header = cast(array([literal(c) for c in columns] or [literal("")]), ARRAY(Text))
    return " UNION ALL ".join(
        compile_literal(
            select(import_rows.c.n, literal(name), problem.label("problem")).where(
                problem.is_not(None), ~_exists if on_conflict == "skip" else true()
            )
        )
        for name in CREATE_FIELDS
        if (problem := _type_problem(name, on_conflict, header)) is not None
    )


# The rules on what a record gives, not those on totals only the ledger writes (reserved):
# every column a CHECK names is a field a record may give.
_CHECKS = """
    SELECT conname, pg_get_expr(conbin, conrelid) FROM pg_constraint c
    WHERE conrelid = 'products'::regclass AND contype = 'c'
      AND NOT EXISTS (SELECT FROM pg_attribute a
                      WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
                        AND a.attname <> ALL (%s))
    ORDER BY conname
"""


# Records that repeat an earlier record's SKU (any case): always a 422, whatever on_conflict.
_sku = func.lower(import_rows.c.sku)


_first = func.min(import_rows.c.n).over(partition_by=_sku)


_repeats = select(import_rows.c.n, _first.label("first")).subquery()


REPEATED = compile_literal(
    select(_repeats.c.n, literal("sku"), literal("file:") + cast(_repeats.c.first, Text)).where(
        _repeats.c.n > _repeats.c.first
    )
)


ANY_REPEATED = compile_once(select(exists(select(_sku).group_by(_sku).having(func.count() > 1))))


# Records whose SKU exists (on_conflict=error: 409).
EXISTING = compile_literal(
    select(import_rows.c.n, literal("sku"), literal("exists:") + Product.sku).join(
        Product, same_sku
    )
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
CSV_LINE_NUMBERS = f"""
    SELECT n, (1 + n + coalesce(sum(newlines) OVER (
        ORDER BY n ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0))::bigint AS line
    FROM (
        SELECT n, (SELECT coalesce(sum(length(v) - length(replace(v, e'\\n', ''))), 0)
                   FROM unnest(ARRAY[{", ".join(STAGED_FIELDS)}]) v
                  ) AS newlines
        FROM import_rows
    ) r
"""


_CSV_LINES = f"SELECT n, line FROM ({CSV_LINE_NUMBERS}) x WHERE n = ANY(%s)"


# Only on the failure path: import_is_json (schema.sql) is slow but finds every bad line.
INVALID_JSON = """
    SELECT n, 'line', 'invalid_json' FROM import_lines
    WHERE line ~ '\\S' AND NOT import_is_json(line)
"""


def _json_types(name: str) -> tuple[str, ...]:
    """The JSON types a field may have in an NDJSON record, as the API's models take it."""
    column = COLUMNS[name]
    kinds = (
        ("string", "number")
        if isinstance(column.type, Numeric)
        else (("number",) if isinstance(column.type, Integer) else ("string",))
    )
    return (*kinds, "null") if column.nullable else kinds


_INTEGER_FIELDS = [f for f in CREATE_FIELDS if isinstance(COLUMNS[f].type, Integer)]


# What the API's strict models refuse: not an object, unknown keys, wrong JSON types.
WRONG_SHAPE = f"""
    SELECT d.n, e.field, e.problem
    FROM import_docs d CROSS JOIN LATERAL (
        SELECT 'line' AS field, 'not_an_object' AS problem WHERE jsonb_typeof(d.doc) <> 'object'
        UNION ALL
        SELECT k, 'unknown_field'
        FROM jsonb_object_keys(CASE jsonb_typeof(d.doc) WHEN 'object' THEN d.doc ELSE '{{}}' END) k
        WHERE k <> ALL (ARRAY[{", ".join(f"'{f}'" for f in STAGED_FIELDS)}])
        UNION ALL
        SELECT f.name, 'wrong_type'
        FROM (VALUES {", ".join(f"('{f}', ARRAY{list(_json_types(f))!r})" for f in CREATE_FIELDS)},
                     ('{LOCATION_FIELD}', ARRAY['string', 'null']))
             AS f(name, types)
        WHERE d.doc ? f.name AND jsonb_typeof(d.doc -> f.name) <> ALL (f.types)
        UNION ALL
        SELECT f.name, 'not_an_integer'
        FROM unnest(ARRAY[{", ".join(f"'{f}'" for f in _INTEGER_FIELDS)}]::text[]) f(name)
        WHERE jsonb_typeof(d.doc -> f.name) = 'number' AND d.doc ->> f.name !~ '^-?[0-9]+$'
    ) e
"""


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


LineNumbers = Callable[[Connection, list[int]], Awaitable[dict[int, int]]]


async def _check_violations(conn: Connection, on_conflict: OnConflict) -> str:
    """Records breaking a CHECK of products, evaluated with the catalog's own expressions."""
    checks = await (await conn.execute(_CHECKS, (list(CREATE_FIELDS),))).fetchall()
    # The expressions are SQL the catalog printed (pg_get_expr): composed as SQL, the names
    # as literals.
    cases = sql.SQL(", ").join(
        _CHECK_CASE.format(sql.Literal(_field_of(name)), sql.Literal(name), sql.SQL(expression))
        for name, expression in checks
    )
    query = _CHECKED.format(rows=sql.SQL(_typed_rows(on_conflict)), cases=cases)
    return query.as_string(conn)


_CHECK_CASE = sql.SQL("({}, {}, ({})::boolean)")


# An expression names its columns unqualified; `t` is the only relation that has them.
_CHECKED = sql.SQL(
    "SELECT t.n, c.field, c.name FROM ({rows}) t CROSS JOIN LATERAL "
    "(VALUES {cases}) c(field, name, ok) WHERE c.ok IS FALSE"
)


def _field_of(constraint: str) -> str:
    rule = rule_for(constraint)
    return rule.field if rule else "line"


# A count of a product's total takes the difference out of MAIN: records that would take
# more than MAIN has available there (units reserved stay).
_typed_quantity = typed("quantity")
_SHORT = compile_literal(
    select(
        import_rows.c.n,
        literal("quantity"),
        literal("short:") + cast(ProductStock.available, Text),
    )
    .join_from(import_rows, Product, same_sku)
    .join(
        ProductStock,
        and_(ProductStock.product_id == Product.id, ProductStock.location_id == MAIN_LOCATION_ID),
    )
    .where(
        _typed_quantity.is_not(None),
        Product.quantity - _typed_quantity > ProductStock.available,
    )
)


async def invalid_records(
    conn: Connection, on_conflict: OnConflict, columns: list[str], repeated: str
) -> str:
    """The (record, field, problem) rows of every value a product cannot take, and of the
    records `repeated` finds."""
    return " UNION ALL ".join(
        [_type_problems(on_conflict, columns), await _check_violations(conn, on_conflict), repeated]
    )


async def diagnose(
    conn: Connection, line_of: LineNumbers, on_conflict: OnConflict, columns: list[str]
) -> None:
    """After a failed write: raise the 422 or 409 naming the records at fault, if found."""
    await report(conn, await invalid_records(conn, on_conflict, columns, REPEATED), line_of)
    if on_conflict == "error":
        await report(conn, EXISTING, line_of, existing=True)
    if on_conflict == "update":
        await report(conn, _SHORT, line_of, short=True)


async def report(
    conn: Connection,
    rows_sql: str,
    line_of: LineNumbers,
    *,
    existing: bool = False,
    short: bool = False,
) -> None:
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
    if short:
        raise CountsShort(errors, invalid_records=total)
    raise ValidationFailed(
        f"{total} records are invalid; nothing was imported.", errors, invalid_records=total
    )


def _earlier(problem: str) -> int | None:
    """The record a problem refers to as well (named by its line in the message)."""
    kind, _, value = problem.partition(":")
    return int(value) if kind in ("file", "at_repeat", "disagrees") else None


def _message(problem: str, lines: dict[int, int]) -> str:
    kind, _, value = problem.partition(":")
    if kind == "file":
        return f"repeats the SKU of line {lines[int(value)]} (SKUs are unique ignoring case)"
    if kind == "exists":
        return f"a product with SKU '{value}' already exists"
    if kind == "short":
        return f"would leave MAIN with fewer units than it has reserved ({value} available)"
    if kind == "reserved":
        code, _, reserved = value.rpartition(":")
        return f"would leave {code} with fewer units than it has reserved ({reserved})"
    if kind == "no_location":
        return f"'{value}' is not a location"
    if kind == "at_repeat":
        return f"repeats the SKU and location of line {lines[int(value)]}"
    if kind == "disagrees":
        return (
            f"differs from line {lines[int(value)]}: the records of one SKU must agree on "
            "every field but quantity and location"
        )
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    rule = rule_for(problem)
    return f"{rule.message} ({problem})" if rule else f"violates {problem}"


async def csv_lines(conn: Connection, ns: list[int]) -> dict[int, int]:
    cur = await conn.execute(_CSV_LINES, (ns,))
    return {n: line for n, line in await cur.fetchall()}


async def ndjson_lines(conn: Connection, ns: list[int]) -> dict[int, int]:
    return {n: n for n in ns}

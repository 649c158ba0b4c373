"""An import with a `location` column: a stock count per location.

Each record says how many units of its product are at its location (no location: MAIN).
One product may have records at several locations, which must agree on every other field.
Unlike an import of totals, the whole file is checked before anything is written, since
its records are then reduced to one per product: the products' own write is any import's
(app.imports.staging.write: created, skipped or updated by `on_conflict`), a new product
starting with its MAIN count; then every count that differs from a location's quantity is
one movement (reason `correction`, note `import`), the stock rows locked in (product,
location) order, so that the ledger still adds up.
"""

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    exists,
    false,
    func,
    insert,
    literal,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.schema import CreateTable

from app.database import Connection, compile_literal, compile_once
from app.imports.diagnosis import CSV_LINE_NUMBERS, EXISTING, invalid_records, report
from app.imports.parsing import LOCATION_FIELD
from app.imports.staging import (
    EDITS,
    Imported,
    OnConflict,
    count_movements,
    import_rows,
    same_sku,
    typed,
)
from app.models import MAIN_LOCATION, MAIN_LOCATION_ID, Location, Product, ProductStock
from app.products.queries import CREATE_FIELDS

# The fields every record of one product must give alike.
AGREED = tuple(name for name in CREATE_FIELDS if name not in ("sku", "quantity"))

# Each record's place and count, kept whole while import_rows is reduced to one record per
# product; its line, for the problems found after that.
import_at = Table(
    "import_at",
    MetaData(),
    Column("n", BigInteger, nullable=False),
    Column("line", BigInteger, nullable=False),
    Column("key", Text),
    Column("location", Text),
    Column("location_id", BigInteger),
    Column("quantity", Integer),
    Column("existed", Boolean, nullable=False),
    Column("edited", Boolean, nullable=False, server_default=false()),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
_CREATE = compile_literal(CreateTable(import_at))

_sku = func.lower(import_rows.c.sku)
_code = func.coalesce(func.nullif(import_rows.c[LOCATION_FIELD], ""), literal(MAIN_LOCATION))


def _places(lines: Any) -> str:
    """Every record into import_at, with its line: `lines` is a relation (n, line)."""
    return compile_literal(
        insert(import_at).from_select(
            ["n", "line", "key", "location", "location_id", "quantity", "existed"],
            select(
                import_rows.c.n,
                lines.c.line,
                _sku,
                _code,
                Location.id,
                typed("quantity"),
                exists().where(same_sku),
            )
            .join_from(import_rows, lines, lines.c.n == import_rows.c.n)
            .outerjoin(Location, func.lower(Location.code) == func.lower(_code)),
        )
    )


_CSV_LINES = text(CSV_LINE_NUMBERS).columns(n=BigInteger, line=BigInteger).subquery("lines")
_NDJSON_LINES = select(import_rows.c.n, import_rows.c.n.label("line")).subquery("lines")
_PLACES = {True: _places(_CSV_LINES), False: _places(_NDJSON_LINES)}


# --- What only a file of counts can get wrong, as (record, field, problem) rows.
_unknown = select(
    import_at.c.n, literal(LOCATION_FIELD), "no_location:" + import_at.c.location
).where(import_at.c.location_id.is_(None))
_at_first = (
    select(
        import_at.c.n,
        func.min(import_at.c.n)
        .over(partition_by=(import_at.c.key, import_at.c.location_id))
        .label("first"),
    )
    .where(import_at.c.location_id.is_not(None))
    .subquery()
)
_repeated = select(
    _at_first.c.n, literal(LOCATION_FIELD), "at_repeat:" + cast(_at_first.c.first, Text)
).where(_at_first.c.n > _at_first.c.first)


def _first_of_product(value: Any) -> Any:
    """A window value: `value` of the product's first record."""
    return func.first_value(value).over(partition_by=_sku, order_by=import_rows.c.n)


_agreeing = select(
    import_rows.c.n,
    _first_of_product(import_rows.c.n).label("first"),
    *(typed(name).is_distinct_from(_first_of_product(typed(name))).label(name) for name in AGREED),
).subquery()
_disagreeing = [
    select(_agreeing.c.n, literal(name), "disagrees:" + cast(_agreeing.c.first, Text)).where(
        _agreeing.c[name]
    )
    for name in AGREED
]
LOCATED_PROBLEMS = compile_literal(union_all(_unknown, _repeated, *_disagreeing))


# --- One record per product for the products' write: the first, its quantity the
# product's MAIN count (where a new product starts; an existing one's counts are movements).
_firsts = select(
    import_rows.c.n, func.min(import_rows.c.n).over(partition_by=_sku).label("first")
).subquery()
_REDUCE = compile_literal(
    import_rows.delete().where(
        import_rows.c.n.in_(select(_firsts.c.n).where(_firsts.c.n > _firsts.c.first))
    )
)
# A join, not a subquery per record: neither staging table has an index.
_main_count = (
    select(import_rows.c.n, cast(import_at.c.quantity, Text).label("quantity"))
    .outerjoin(
        import_at,
        and_(import_at.c.key == _sku, import_at.c.location_id == MAIN_LOCATION_ID),
    )
    .subquery()
)
_TO_PRODUCTS = compile_literal(
    update(import_rows)
    .values(
        quantity=_main_count.c.quantity,
        given=func.array_remove(import_rows.c.given, "quantity"),
    )
    .where(import_rows.c.n == _main_count.c.n)
)
# Products whose fields the write will change (before it does): their records count as
# updated whatever their counts do.
_EDITED = compile_once(
    update(import_at)
    .values(edited=True)
    .where(import_at.c.key.in_(select(_sku).join_from(import_rows, Product, same_sku).where(EDITS)))
)


# --- The counts, for the records whose product the import writes (`skip` leaves existing
# products alone).
def _targets(skip: bool) -> Any:
    return (
        select(
            import_at.c.n,
            import_at.c.quantity,
            import_at.c.location_id,
            Product.id.label("product_id"),
        )
        .join_from(import_at, Product, func.lower(Product.sku) == import_at.c.key)
        .where(
            import_at.c.quantity.is_not(None),
            ~import_at.c.existed if skip else true(),
        )
        .cte("targets")
    )


def _counts(skip: bool) -> tuple[str, str, str, str]:
    targets = _targets(skip)
    stock = and_(
        ProductStock.product_id == targets.c.product_id,
        ProductStock.location_id == targets.c.location_id,
    )
    # A location never stocked gets its (empty) stock row first, for the count to move.
    stocked = compile_literal(
        pg_insert(ProductStock)
        .from_select(
            ["product_id", "location_id"],
            select(targets.c.product_id, targets.c.location_id).where(targets.c.quantity != 0),
        )
        .on_conflict_do_nothing()
    )
    locked = compile_literal(
        select(ProductStock.product_id)
        .join_from(targets, ProductStock, stock)
        .order_by(ProductStock.product_id, ProductStock.location_id)
        .with_for_update(of=ProductStock)
    )
    # Counts below what a location has reserved (409, naming the records).
    short = compile_literal(
        select(
            targets.c.n,
            literal("quantity"),
            "reserved:" + Location.code + ":" + cast(ProductStock.reserved, Text),
        )
        .join_from(targets, ProductStock, stock)
        .join(Location, Location.id == ProductStock.location_id)
        .where(targets.c.quantity < ProductStock.reserved)
    )
    moves = (
        select(
            targets.c.n,
            ProductStock.product_id,
            Location.code,
            (targets.c.quantity - ProductStock.quantity).label("delta"),
            targets.c.quantity,
            ProductStock.location_id,
        )
        .join_from(targets, ProductStock, stock)
        .join(Location, Location.id == ProductStock.location_id)
        .where(targets.c.quantity != ProductStock.quantity)
        .cte("moves")
    )
    moved = count_movements(
        select(moves.c.product_id, moves.c.code, moves.c.delta, moves.c.quantity).order_by(
            moves.c.product_id, moves.c.location_id
        )
    ).cte("moved")
    # (created, updated, records): per record, as every import counts.
    counted = compile_literal(
        select(
            select(func.count()).where(~import_at.c.existed).scalar_subquery(),
            select(func.count())
            .where(
                import_at.c.existed,
                import_at.c.edited | import_at.c.n.in_(select(moves.c.n)),
                false() if skip else true(),
            )
            .scalar_subquery(),
            select(func.count()).select_from(import_at).scalar_subquery(),
        ).add_cte(moved)
    )
    return stocked, locked, short, counted


_COUNTS = {skip: _counts(skip) for skip in (False, True)}


_LINES = compile_once(
    select(import_at.c.n, import_at.c.line).where(
        import_at.c.n == any_(bindparam("ns", type_=ARRAY(BigInteger)))
    )
)


async def lines(conn: Connection, ns: list[int]) -> dict[int, int]:
    """Records' lines in the file as sent (kept from before the file was reduced)."""
    cur = await conn.execute(_LINES.sql, _LINES.params(ns=ns))
    return {n: line for n, line in await cur.fetchall()}


async def reduce(
    conn: Connection, on_conflict: OnConflict, columns: list[str], *, csv: bool
) -> list[str]:
    """Check every staged record, then leave one per product for the products' write;
    the columns that write gives (a CSV header's, without the counts).

    Raises ValidationFailed (bad values, unknown locations, a product twice at one
    location, records of one product that disagree) or, for `error`, DuplicateSku.
    """
    await conn.execute(_CREATE)
    await conn.execute(_PLACES[csv])
    invalid = await invalid_records(conn, on_conflict, columns, LOCATED_PROBLEMS)
    await report(conn, invalid, lines)
    if on_conflict == "error":
        await report(conn, EXISTING, lines, existing=True)
    written = [name for name in columns if name not in ("quantity", LOCATION_FIELD)]
    await conn.execute(_REDUCE)
    await conn.execute(_TO_PRODUCTS)
    if on_conflict == "update":
        await conn.execute(_EDITED.sql, _EDITED.params(columns=written))
    return written


async def count(conn: Connection, on_conflict: OnConflict) -> Imported:
    """After the products' write: every count that differs becomes its movement; what the
    import did, per record. Raises CountsShort for counts below a location's holds."""
    stocked, locked, short, counted = _COUNTS[on_conflict == "skip"]
    await conn.execute(stocked)
    await conn.execute(locked)
    await report(conn, short, lines, short=True)
    row = await (await conn.execute(counted)).fetchone()
    assert row is not None
    created, updated, records = (int(c) for c in row)
    return Imported(created, updated, records - created - updated)

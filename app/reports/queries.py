"""GET /reports/...: statements on schema.sql's report views, so psql and the API agree."""

from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Text,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    select,
)

from app.database import Bound, Database, compile_once
from app.models import movement_daily, stock_summary
from app.products.statements import COPY_CSV, COPY_JSON_ROWS

# Bucket sizes: a `date_trunc` field. Weeks start on Monday (ISO), all of them in UTC days.
BUCKETS = ("day", "week", "month")


class StockSummary(NamedTuple):
    """The one row of the view stock_summary."""

    products: int
    units: Decimal  # numeric: a sum that no integer type bounds
    reserved: Decimal
    value: Decimal  # exactly 2 decimals
    out_of_stock: int
    low_stock: int
    as_of: datetime


_STOCK = compile_once(select(*stock_summary.columns))


async def stock_summary_now(db: Database) -> StockSummary:
    """The stock at a glance, from one snapshot (one statement on the view)."""
    async with db.connection() as conn:
        row = await (await conn.execute(_STOCK.sql)).fetchone()
    assert row is not None  # an aggregate without GROUP BY always has its row
    return StockSummary(*row)


_at_location = (
    func.stock_summary_at(bindparam("location", type_=Text))
    .table_valued(*(column(c.name, c.type) for c in stock_summary.columns))
    .alias("summary")
)
_STOCK_AT = compile_once(select(*_at_location.c))


async def stock_summary_at(db: Database, location: str) -> StockSummary | None:
    """The same summary from the units at one location; None when no location has the code."""
    async with db.connection() as conn:
        row = await (
            await conn.execute(_STOCK_AT.sql, _STOCK_AT.params(location=location))
        ).fetchone()
    return None if row is None else StockSummary(*row)


# movement_daily(from_at, to_at): the view over a range, planned with the created_at index.
_daily = (
    func.movement_daily(
        bindparam("from_at", type_=DateTime(timezone=True)),
        bindparam("to_at", type_=DateTime(timezone=True)),
    )
    .table_valued(*(column(c.name, c.type) for c in movement_daily.columns))
    .alias("daily")
)
# The bucket's first day. The day goes through `timestamp` (no time zone): date_trunc on a
# timestamptz would cut in the session's time zone, and these days are UTC days already.
_bucket = cast(func.date_trunc(bindparam("bucket"), cast(_daily.c.day, DateTime())), Date)
_grouped = (
    select(
        func.to_char(_bucket, "YYYY-MM-DD").label("bucket"),
        _daily.c.reason,
        cast(func.sum(_daily.c.movements), BigInteger).label("movements"),
        func.sum(_daily.c.units).label("units"),
    )
    .group_by(_bucket, _daily.c.reason)
    # Oldest bucket first, then reason alphabetically: byte order, whatever the collation.
    .order_by(_bucket, _daily.c.reason.collate("C"))
)
_rows = _grouped.subquery("r")
# A report row's JSON: row_to_json names the members after the columns, compactly. The
# outer query keeps the order ('YYYY-MM-DD' text sorts as the dates do).
_JSON_ROWS = compile_once(
    select(cast(func.row_to_json(literal_column("r")), Text))
    .select_from(_rows)
    .order_by(_rows.c.bucket, _rows.c.reason.collate("C"))
)
_CSV_ROWS = compile_once(_grouped)


def movements_report(*, csv: bool, from_at: datetime, to_at: datetime, bucket: str) -> Bound:
    """The movements report as a COPY ... TO STDOUT and its parameters: CSV with a header,
    or one JSON object per row. psycopg binds COPY parameters on the client side, so the
    planner sees the range and uses the created_at index."""
    assert bucket in BUCKETS
    inner = _CSV_ROWS if csv else _JSON_ROWS
    copy = sql.SQL(COPY_CSV if csv else COPY_JSON_ROWS).format(sql.SQL(inner.sql))
    return Bound(copy, inner.params(from_at=from_at, to_at=to_at, bucket=bucket))

"""The change log in SQL: pages of events after a cursor, numbering them, removing old ones.

Events leave PostgreSQL as API JSON (schema.sql: product_changes_page). Only numbered
events are ever read: schema.sql explains why that makes a cursor exactly-once.
"""

from dataclasses import dataclass

from sqlalchemy import BigInteger, Boolean, Integer, Text, bindparam, cast, func, select, true

from app.database import Connection, Database, compile_once
from app.models import ProductChangesPurged

# The page and the retention mark come from one statement, so from one snapshot: a purge
# committing between two reads cannot make a page look complete while it is not. Without
# `after`, the page starts at the oldest event retained. (max() makes the mark one row,
# 0, even if its row is missing.)
_mark = select(func.coalesce(func.max(ProductChangesPurged.through), 0).label("through")).subquery(
    "mark"
)
_page = (
    func.product_changes_page(
        func.coalesce(bindparam("after", type_=BigInteger), _mark.c.through),
        bindparam("limit", type_=Integer),
    )
    .table_valued("seq", "type", "at", "event")
    .lateral("e")
)
_PAGE = compile_once(
    # Text, not json: the API sends the text PostgreSQL built as it is.
    select(_mark.c.through, _page.c.seq, _page.c.type, cast(_page.c.event, Text))
    .select_from(_mark.outerjoin(_page, true()))
    .order_by(_page.c.seq)
)
_LAST = compile_once(select(func.product_changes_last_seq()))
# schema.sql's triggers write this transaction's events set-wise, one INSERT per statement,
# instead of row by row: for statements of many rows.
_IN_BULK = "SET LOCAL inventory.change_log = bulk"
_NUMBER = compile_once(
    select(
        func.product_changes_sequence(
            bindparam("max_rows", type_=Integer), bindparam("wait", type_=Boolean)
        )
    )
)
# A procedure: SQLAlchemy compiles no CALL. Returns its INOUT parameter, one row.
_AWAIT = "CALL product_changes_await(%(poll)s, %(wait)s, %(max_rows)s)"
_PURGE = compile_once(
    select(
        func.product_changes_purge(
            bindparam("days", type_=Integer), bindparam("max_rows", type_=Integer)
        )
    )
)


@dataclass(frozen=True)
class Event:
    """One event: its cursor, its type and its JSON text."""

    seq: int
    type: str
    json: str


@dataclass(frozen=True)
class Page:
    """Events in seq order, and the retention mark: every seq <= `purged` is gone."""

    events: list[Event]
    purged: int

    def expired(self, after: int | None) -> bool:
        """True when events after the cursor `after` have been removed."""
        return after is not None and after < self.purged


async def log_in_bulk(conn: Connection) -> None:
    """Have the rest of the current transaction's statements logged set-wise (schema.sql:
    the change log's triggers): for big statements, such as an import's."""
    await conn.execute(_IN_BULK)


async def page(db: Database, *, after: int | None, limit: int) -> Page:
    """Up to `limit` events with seq > `after` (None: from the oldest retained)."""
    async with db.connection() as conn:
        cur = await conn.execute(_PAGE.sql, _PAGE.params(after=after, limit=limit))
        rows = await cur.fetchall()
    return Page(
        [Event(int(seq), type_, json) for _, seq, type_, json in rows if seq is not None],
        int(rows[0][0]),
    )


async def last_seq(db: Database) -> int:
    """The highest seq given so far (0 before the first)."""
    async with db.connection() as conn:
        row = await (await conn.execute(_LAST.sql, _LAST.params())).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


async def number(conn: Connection, *, max_rows: int) -> int | None:
    """Number up to `max_rows` committed statements (schema.sql: product_changes_sequence),
    on an autocommit connection.

    Returns how many events; None when another sequencer held the lock.
    """
    cur = await conn.execute(_NUMBER.sql, _NUMBER.params(max_rows=max_rows, wait=False))
    row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def await_numbered(
    conn: Connection, *, poll_seconds: float, wait_seconds: float, max_rows: int
) -> int | None:
    """Number committed statements as they come for `wait_seconds`, looking every
    `poll_seconds` inside the server (schema.sql: product_changes_await; it NOTIFYs each
    batch), on an autocommit connection without a statement_timeout shorter than the wait.

    Returns how many events it numbered; None as soon as another sequencer held the lock.
    """
    cur = await conn.execute(
        _AWAIT, {"poll": poll_seconds, "wait": wait_seconds, "max_rows": max_rows}
    )
    row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def purge(db: Database, *, days: int, max_rows: int) -> int | None:
    """Remove one batch of events older than `days`, or than the database's own floor if
    that is longer (product_changes_purge).

    Returns how many; None when another process was purging.
    """
    async with db.connection() as conn:
        cur = await conn.execute(_PURGE.sql, _PURGE.params(days=days, max_rows=max_rows))
        row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])

"""Readiness: does the database answer, is the schema in place, how far behind is a replica?"""

from typing import Any, NamedTuple

from psycopg import AsyncConnection
from sqlalchemy import Text, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

from app.database import Database, compile_once
from app.models import Base

_TABLES = sorted(Base.metadata.tables)
# Every table of the models exists (to_regclass is NULL for one that does not).
_names = func.unnest(bindparam("tables", type_=ARRAY(Text))).table_valued("name")
_READY = compile_once(
    select(func.bool_and(func.to_regclass(_names.c.name).is_not(None))).select_from(_names)
)


async def schema_ready(db: Database) -> bool:
    """True when the database answers and every table of the models exists."""
    async with db.connection() as conn:
        row = await (await conn.execute(_READY.sql, _READY.params(tables=_TABLES))).fetchone()
    return bool(row and row[0])


# WAL positions as numbers (bytes from 0/0): comparable in Python, no pg_lsn adapter needed.
_ORIGIN: ColumnElement[Any] = literal_column("'0/0'::pg_lsn")
# Where the primary's WAL ends now: a replica that has replayed this far has everything
# the primary had when it was read.
_PRIMARY_POSITION = compile_once(select(func.pg_wal_lsn_diff(func.pg_current_wal_lsn(), _ORIGIN)))
# A replica's state: in recovery at all, how far it has replayed, and whether a WAL
# receiver is connected to a primary. The service role sees only that a receiver runs
# (pg_stat_wal_receiver's pid); a replica with none receives nothing, whatever it replayed.
_REPLICA_STATE = compile_once(
    select(
        func.pg_is_in_recovery(),
        func.pg_wal_lsn_diff(func.pg_last_wal_replay_lsn(), _ORIGIN),
        literal_column("EXISTS (SELECT FROM pg_stat_wal_receiver)"),
    )
)


class ReplicaState(NamedTuple):
    in_recovery: bool
    replayed: int | None  # WAL position replayed; None when not in recovery
    receiving: bool  # a WAL receiver runs


async def primary_position(conn: AsyncConnection[Any]) -> int:
    """The primary's current WAL position, read on `conn` (a connection to the primary)."""
    row = await (await conn.execute(_PRIMARY_POSITION.sql, _PRIMARY_POSITION.params())).fetchone()
    assert row is not None
    return int(row[0])


async def replica_state(db: Database) -> ReplicaState:
    """What the database `db` is connected to says of its replication."""
    async with db.connection() as conn:
        row = await (await conn.execute(_REPLICA_STATE.sql, _REPLICA_STATE.params())).fetchone()
    assert row is not None
    return ReplicaState(bool(row[0]), None if row[1] is None else int(row[1]), bool(row[2]))

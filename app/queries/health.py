"""Readiness: does the database answer, is the schema in place, how far behind is a replica?"""

from sqlalchemy import Text, bindparam, case, func, select
from sqlalchemy.dialects.postgresql import ARRAY

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


# How far behind a streaming replica is, in seconds, seen from the replica. All it received
# is replayed: 0, however long the primary has been idle. Otherwise the time since the last
# replayed commit was made on the primary (an upper bound: after an idle spell it overstates
# the lag until replay catches up, which only sends reads to the primary a little longer).
# NULL (not known) before the first replayed commit.
_caught_up = func.pg_last_wal_receive_lsn() == func.pg_last_wal_replay_lsn()
_REPLICA_LAG = compile_once(
    select(
        func.pg_is_in_recovery(),
        case(
            (_caught_up, 0),
            else_=func.extract("epoch", func.now() - func.pg_last_xact_replay_timestamp()),
        ),
    )
)


async def replica_lag(db: Database) -> tuple[bool, float | None]:
    """(in recovery, seconds behind or None) of the database `db` is connected to."""
    async with db.connection() as conn:
        row = await (await conn.execute(_REPLICA_LAG.sql, _REPLICA_LAG.params())).fetchone()
    assert row is not None
    return bool(row[0]), None if row[1] is None else float(row[1])

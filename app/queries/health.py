"""Readiness: does the database answer, and is the schema in place?"""

from sqlalchemy import Text, bindparam, func, select
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

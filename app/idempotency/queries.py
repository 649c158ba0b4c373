"""The statements behind Idempotency-Key: claim a key, look it up, store the first response."""

from datetime import timedelta
from typing import NamedTuple

from psycopg.types.json import Jsonb
from sqlalchemy import Interval, bindparam, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert

from app.database import Connection, compile_once
from app.models import IdempotencyKey as Key

_this_key = (Key.scope == bindparam("scope"), Key.key == bindparam("key"))
_expired = Key.created_at <= func.now() - bindparam("ttl", type_=Interval)

_CLAIM = compile_once(
    insert(Key)
    .values(scope=bindparam("scope"), key=bindparam("key"), request_hash=bindparam("hash"))
    .on_conflict_do_nothing(index_elements=[Key.scope, Key.key])
    .returning(literal(True))
)
_LOOK_UP = compile_once(
    select(Key.request_hash, Key.status, Key.headers, Key.body, ~_expired).where(*_this_key)
)
# An expired key is reused in place; a concurrent taker blocks on the row, then finds it
# live (the WHERE is re-checked on the newest version) and replays.
_TAKE_OVER = compile_once(
    update(Key)
    .where(*_this_key, _expired)
    .values(
        request_hash=bindparam("hash"), status=None, headers=None, body=None, created_at=func.now()
    )
    .returning(literal(True))
)
_STORE = compile_once(
    update(Key)
    .where(*_this_key)
    .values(status=bindparam("status"), headers=bindparam("headers"), body=bindparam("body"))
)
# Only the claim may wait for a concurrent holder of the key, and only so long.
_LOCK_TIMEOUT = compile_once(select(func.set_config("lock_timeout", bindparam("ms"), True)))
_DEFAULT_LOCK_TIMEOUT = "SET LOCAL lock_timeout TO DEFAULT"
# SKIP LOCKED: several workers purging at once each take different rows, and a key being
# taken over right now is left for the next round.
_doomed = (
    select(Key.scope, Key.key)
    .where(_expired)
    .order_by(Key.created_at)
    .limit(bindparam("batch"))
    .with_for_update(skip_locked=True)
    .cte("doomed")
)
_PURGE = compile_once(delete(Key).where(Key.scope == _doomed.c.scope, Key.key == _doomed.c.key))


class Stored(NamedTuple):
    """A key's row: who used it for what, and the response if the work has finished."""

    request_hash: bytes
    status: int | None
    headers: dict[str, str]
    body: bytes
    live: bool


async def wait_at_most(conn: Connection, seconds: float) -> None:
    """Set this transaction's lock_timeout: how long a claim waits for a running holder."""
    await conn.execute(_LOCK_TIMEOUT.sql, _LOCK_TIMEOUT.params(ms=f"{int(seconds * 1000)}ms"))


async def wait_as_usual(conn: Connection) -> None:
    await conn.execute(_DEFAULT_LOCK_TIMEOUT)


async def claim(conn: Connection, *, scope: str, key: str, digest: bytes) -> bool:
    """Insert the key row (uncommitted until the work commits); False when it exists."""
    cur = await conn.execute(_CLAIM.sql, _CLAIM.params(scope=scope, key=key, hash=digest))
    return await cur.fetchone() is not None


async def look_up(conn: Connection, *, scope: str, key: str, ttl: timedelta) -> Stored | None:
    cur = await conn.execute(_LOOK_UP.sql, _LOOK_UP.params(scope=scope, key=key, ttl=ttl))
    row = await cur.fetchone()
    if row is None:
        return None
    digest, status, headers, body, live = row
    return Stored(bytes(digest), status, headers or {}, bytes(body or b""), bool(live))


async def take_over(
    conn: Connection, *, scope: str, key: str, digest: bytes, ttl: timedelta
) -> bool:
    """Reuse an expired key's row for a new request; False when someone else did first."""
    params = _TAKE_OVER.params(scope=scope, key=key, hash=digest, ttl=ttl)
    return await (await conn.execute(_TAKE_OVER.sql, params)).fetchone() is not None


async def store(
    conn: Connection, *, scope: str, key: str, status: int, headers: dict[str, str], body: bytes
) -> None:
    params = _STORE.params(scope=scope, key=key, status=status, headers=Jsonb(headers), body=body)
    await conn.execute(_STORE.sql, params)


async def purge(conn: Connection, *, ttl: timedelta, batch: int) -> int:
    """Delete up to `batch` expired keys, oldest first; return how many went."""
    cur = await conn.execute(_PURGE.sql, _PURGE.params(ttl=ttl, batch=batch))
    return int(cur.rowcount)

"""Reservations in SQL: the rules are schema.sql's (reserve_stock, reservation_change,
reservations_expire); rows leave PostgreSQL as API JSON (reservation_json)."""

import json
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import (
    BigInteger,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB

from app.core.errors import refused
from app.database import Connection, Database, compile_once
from app.models import Reservation, ReservationLine

RESERVATION_ROW = Reservation.__table__.table_valued()  # type: ignore[attr-defined]
RESERVATION_JSON = cast(func.reservation_json(RESERVATION_ROW), Text).label("json")

_RESERVE = compile_once(
    select(
        cast(
            func.reserve_stock(
                bindparam("reference", type_=Text),
                bindparam("expires_in", type_=Integer),
                bindparam("lines", type_=JSONB),
            ),
            Text,
        )
    )
)
_CHANGE = compile_once(
    select(
        cast(
            func.reservation_change(
                bindparam("id", type_=BigInteger),
                bindparam("action", type_=Text),
                bindparam("expires_in", type_=Integer),
            ),
            Text,
        )
    )
)
_GET = compile_once(
    select(RESERVATION_JSON).where(Reservation.id == bindparam("id", type_=BigInteger))
)
_status: Any = bindparam("status", type_=Text)
_reference: Any = bindparam("reference", type_=Text)
_sku: Any = bindparam("sku", type_=Text)
# The status as reservation_json shows it: an active one past its expiry holds nothing.
_shown_status = case(
    (and_(Reservation.status == "active", Reservation.expires_at <= func.now()), "expired"),
    else_=Reservation.status,
)
# Newest first; each filter is NULL when not asked for.
_LIST = compile_once(
    select(RESERVATION_JSON, Reservation.id)
    .where(
        Reservation.id < bindparam("before", type_=BigInteger),
        _reference.is_(None) | (Reservation.reference == _reference),
        _status.is_(None) | (_shown_status == _status),
        _sku.is_(None)
        | exists().where(
            ReservationLine.reservation_id == Reservation.id,
            func.lower(ReservationLine.sku) == func.lower(_sku),
        ),
    )
    .order_by(Reservation.id.desc())
    .limit(bindparam("limit"))
)
_EXPIRE = compile_once(select(func.reservations_expire(bindparam("max_rows", type_=Integer))))


async def reserve(
    conn: Connection, *, reference: str | None, expires_in: int, lines: Sequence[dict[str, Any]]
) -> str:
    """Hold every line or nothing; the reservation's JSON."""
    params = _RESERVE.params(reference=reference, expires_in=expires_in, lines=json.dumps(lines))
    try:
        row = await (await conn.execute(_RESERVE.sql, params)).fetchone()
    except psycopg.Error as exc:
        raise refused(exc) from None
    assert row is not None
    return str(row[0])


async def change(
    conn: Connection, *, reservation_id: int, action: str, expires_in: int | None = None
) -> str:
    """fulfil, release or extend an active reservation; its JSON after."""
    params = _CHANGE.params(id=reservation_id, action=action, expires_in=expires_in)
    try:
        row = await (await conn.execute(_CHANGE.sql, params)).fetchone()
    except psycopg.Error as exc:
        raise refused(exc, reservation_id=reservation_id) from None
    assert row is not None
    return str(row[0])


async def reservation(db: Database, *, reservation_id: int) -> str | None:
    async with db.connection() as conn:
        row = await (await conn.execute(_GET.sql, _GET.params(id=reservation_id))).fetchone()
    return None if row is None else str(row[0])


async def reservations_page(
    db: Database,
    *,
    before: int,
    limit: int,
    status: str | None,
    reference: str | None,
    sku: str | None,
) -> list[tuple[str, int]]:
    params = _LIST.params(before=before, limit=limit, status=status, reference=reference, sku=sku)
    async with db.connection() as conn:
        rows = await (await conn.execute(_LIST.sql, params)).fetchall()
    return [(str(json_), int(id_)) for json_, id_ in rows]


async def expire_due(db: Database, *, max_rows: int) -> int:
    """Mark up to max_rows due reservations expired; how many."""
    async with db.connection() as conn:
        row = await (await conn.execute(_EXPIRE.sql, _EXPIRE.params(max_rows=max_rows))).fetchone()
    return int(row[0]) if row is not None else 0

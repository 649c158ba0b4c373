"""Webhooks in SQL: subscriptions, their delivery log, and the delivery protocol.

Rows leave PostgreSQL as API JSON (schema.sql: webhook_json, webhook_attempt_json); the
protocol's rules (leases, cursors, backoff, giving up) are schema.sql's functions.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg import errors
from sqlalchemy import (
    BigInteger,
    DateTime,
    Double,
    Integer,
    Interval,
    Text,
    Uuid,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY

from app.core.errors import refused
from app.core.pages import cut_page
from app.database import Connection, Database, Statement, compile_once
from app.models import Webhook, WebhookAttempt

WEBHOOK_ROW = Webhook.__table__.table_valued()  # type: ignore[attr-defined]
ATTEMPT_ROW = WebhookAttempt.__table__.table_valued()  # type: ignore[attr-defined]
WEBHOOK_JSON = cast(func.webhook_json(WEBHOOK_ROW), Text).label("json")
ATTEMPT_JSON = cast(func.webhook_attempt_json(ATTEMPT_ROW), Text).label("json")

_INSERT = compile_once(
    insert(Webhook)
    .values(
        url=bindparam("url"),
        events=bindparam("events", type_=ARRAY(Text)),
        description=bindparam("description"),
        secret=bindparam("secret"),
    )
    .returning(Webhook.id, WEBHOOK_JSON)
)
_LIST = compile_once(select(WEBHOOK_JSON).order_by(Webhook.id))
_GET = compile_once(select(WEBHOOK_JSON).where(Webhook.id == bindparam("id", type_=BigInteger)))
_DELETE = compile_once(
    delete(Webhook).where(Webhook.id == bindparam("id", type_=BigInteger)).returning(Webhook.id)
)

# The webhook (a row even when it has no attempts, none when it does not exist) and up to
# `limit` of its attempts before the cursor, newest first, in one round trip.
_attempts = (
    select(ATTEMPT_JSON, WebhookAttempt.id)
    .where(
        WebhookAttempt.webhook_id == Webhook.id,
        WebhookAttempt.id < func.coalesce(bindparam("before", type_=BigInteger), 2**63 - 1),
    )
    .order_by(WebhookAttempt.id.desc())
    .limit(bindparam("limit", type_=Integer))
    .lateral("a")
)
_ATTEMPTS_PAGE = compile_once(
    select(_attempts.c.json, _attempts.c.id)
    .select_from(Webhook.__table__.outerjoin(_attempts, true()))
    .where(Webhook.id == bindparam("id", type_=BigInteger))
    .order_by(_attempts.c.id.desc())
)

_leased = func.webhook_lease(
    bindparam("max_webhooks", type_=Integer), bindparam("lease", type_=Double)
).table_valued("id", "token", "url", "secret", "events")
_LEASE = compile_once(select(_leased))
_work = func.webhook_work(
    bindparam("webhook_id", type_=BigInteger),
    bindparam("token", type_=Uuid),
    bindparam("max_attempts", type_=Integer),
    bindparam("max_scan", type_=Integer),
    bindparam("give_up_after", type_=Interval),
).table_valued("seq", "attempt", "event", "give_up_at", "fresh")
_WORK = compile_once(select(_work))
_RECORD = compile_once(
    select(
        func.webhook_record(
            bindparam("webhook_id", type_=BigInteger),
            bindparam("token", type_=Uuid),
            bindparam("scanned", type_=BigInteger),
            bindparam("lease", type_=Double),
            bindparam("retry_seconds", type_=Double),
            bindparam("seqs", type_=ARRAY(BigInteger)),
            bindparam("attempts", type_=ARRAY(Integer)),
            bindparam("status_codes", type_=ARRAY(Integer)),
            bindparam("errors", type_=ARRAY(Text)),
            bindparam("durations", type_=ARRAY(Integer)),
            bindparam("give_up_ats", type_=ARRAY(DateTime(timezone=True))),
        )
    )
)
_RELEASE = compile_once(
    select(
        func.webhook_release(
            bindparam("webhook_id", type_=BigInteger), bindparam("token", type_=Uuid)
        )
    )
)
_NEXT_DUE = compile_once(
    select(func.extract("epoch", func.webhook_next_due() - func.clock_timestamp()))
)
_BACKLOG = compile_once(select(func.webhook_backlog_seconds()))
_ANY = compile_once(select(select(Webhook.id).exists()))


async def create_webhook(
    conn: Connection, *, url: str, events: Sequence[str], description: str | None, secret: str
) -> tuple[int, str]:
    """Insert a subscription; its id and its JSON (without the secret).

    Raises TooManyWebhooks when there are 100 already (schema.sql: webhooks_limit).
    """
    params = _INSERT.params(url=url, events=events, description=description, secret=secret)
    try:
        cur = await conn.execute(_INSERT.sql, params)
    except errors.CheckViolation as exc:
        raise refused(exc) from None
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def with_secret(webhook_json: str, secret: str) -> str:
    """The creation answer: the webhook's JSON with its secret, in the documented order."""
    fields: dict[str, Any] = json.loads(webhook_json)
    created_at = fields.pop("created_at")
    return json.dumps({**fields, "secret": secret, "created_at": created_at}, separators=(",", ":"))


async def list_webhooks(db: Database) -> list[str]:
    async with db.connection() as conn:
        rows = await (await conn.execute(_LIST.sql, _LIST.params())).fetchall()
    return [json_ for (json_,) in rows]


async def get_webhook(db: Database, *, webhook_id: int) -> str | None:
    async with db.connection() as conn:
        row = await (await conn.execute(_GET.sql, _GET.params(id=webhook_id))).fetchone()
    return None if row is None else str(row[0])


async def delete_webhook(db: Database, *, webhook_id: int) -> bool:
    """Delete a subscription with its queued deliveries and its log; False if absent."""
    async with db.connection() as conn:
        row = await (await conn.execute(_DELETE.sql, _DELETE.params(id=webhook_id))).fetchone()
    return row is not None


async def attempts_page(
    db: Database, *, webhook_id: int, before: int | None, limit: int
) -> tuple[list[str], int | None] | None:
    """Up to `limit` attempts with id < `before`, newest first, and the last id if more
    remain; None when the webhook does not exist."""
    params = _ATTEMPTS_PAGE.params(id=webhook_id, before=before, limit=limit + 1)
    async with db.connection() as conn:
        rows = await (await conn.execute(_ATTEMPTS_PAGE.sql, params)).fetchall()
    return cut_page(rows, limit)


@dataclass(frozen=True)
class Leased:
    """A subscription this process serves now (its lease runs until renewed or released)."""

    id: int
    token: UUID
    url: str
    secret: str
    events: list[str]

    def held(self) -> dict[str, Any]:
        """The parameters that name the lease in webhook_work, _record and _release."""
        return {"webhook_id": self.id, "token": self.token}


@dataclass(frozen=True)
class Work:
    """One event to send (or a retry of one); `event` is None for one of a type the
    subscription does not take, which only moves its cursor."""

    seq: int
    attempt: int
    event: str | None
    give_up_at: datetime
    fresh: bool


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: the answer's status code, or None and what went wrong."""

    work: Work
    status_code: int | None
    error: str | None
    duration_ms: int


async def lease(db: Database, *, max_webhooks: int, lease_seconds: float) -> list[Leased]:
    """Lease up to `max_webhooks` subscriptions that have work (schema.sql: webhook_lease)."""
    rows = await _fetch(db, _LEASE, max_webhooks=max_webhooks, lease=lease_seconds)
    return [Leased(*row) for row in rows]


async def work(
    db: Database, leased: Leased, *, max_attempts: int, max_scan: int, give_up_after: timedelta
) -> list[Work]:
    """The subscription's next work (webhook_work): due retries, then events after its
    cursor; [] when there is none, or the lease is no longer this process's."""
    rows = await _fetch(
        db,
        _WORK,
        **leased.held(),
        max_attempts=max_attempts,
        max_scan=max_scan,
        give_up_after=give_up_after,
    )
    return [Work(*row) for row in rows]


async def record(
    db: Database,
    leased: Leased,
    outcomes: Sequence[Outcome],
    *,
    scanned: int,
    lease_seconds: float,
    retry_seconds: float,
) -> list[str] | None:
    """Log the attempts and apply what follows (webhook_record), move the cursor to
    `scanned` and renew the lease. Returns the outcomes (delivered, retry, failed) in order;
    None when the lease was no longer this process's (nothing was recorded)."""
    [row] = await _fetch(
        db,
        _RECORD,
        **leased.held(),
        scanned=scanned,
        lease=lease_seconds,
        retry_seconds=retry_seconds,
        seqs=[o.work.seq for o in outcomes],
        attempts=[o.work.attempt for o in outcomes],
        status_codes=[o.status_code for o in outcomes],
        errors=[o.error for o in outcomes],
        durations=[o.duration_ms for o in outcomes],
        give_up_ats=[o.work.give_up_at for o in outcomes],
    )
    return None if row[0] is None else list(row[0])


async def release(db: Database, leased: Leased) -> None:
    """Hand the subscription back (webhook_release)."""
    await _fetch(db, _RELEASE, **leased.held())


async def seconds_to_next_due(db: Database) -> float | None:
    """How long until delivery work falls due without a new event (a retry, a lease that
    ends); None when nothing waits."""
    [row] = await _fetch(db, _NEXT_DUE)
    return None if row[0] is None else float(row[0])


async def backlog_seconds(db: Database) -> float:
    """How long the oldest event a subscription has yet to get has waited; 0 when none."""
    async with db.connection() as conn:
        row = await (await conn.execute(_BACKLOG.sql, _BACKLOG.params())).fetchone()
    return 0.0 if row is None else float(row[0])


async def any_webhook(db: Database) -> bool:
    async with db.connection() as conn:
        row = await (await conn.execute(_ANY.sql, _ANY.params())).fetchone()
    return bool(row and row[0])


async def _fetch(db: Database, statement: Statement, **values: Any) -> list[Any]:
    """The rows of one of the SELECTs above, on a pooled connection (each returns one row
    but webhook_lease and webhook_work, which return sets)."""
    async with db.connection() as conn:
        cur = await conn.execute(statement.sql, statement.params(**values))
        return await cur.fetchall()

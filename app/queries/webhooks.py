"""Webhooks: subscriptions, their delivery log, and the delivery protocol's two calls.

Rows leave PostgreSQL as API JSON (schema.sql: webhook_json, webhook_attempt_json); the
queue's rules (claiming with SKIP LOCKED, backoff, giving up) are schema.sql's functions.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    Integer,
    Interval,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY

from app.database import Connection, Database, compile_once
from app.models import Webhook, WebhookAttempt, WebhookDelivery

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

_claimed = func.webhook_deliveries_claim(
    bindparam("max_rows", type_=Integer),
    bindparam("per_webhook", type_=Integer),
    bindparam("skip", type_=ARRAY(BigInteger)),
    bindparam("lease", type_=Double),
).table_valued("delivery_id", "webhook_id", "seq", "attempt", "url", "secret", "event")
_CLAIM = compile_once(select(_claimed))
_FINISH = compile_once(
    select(
        func.webhook_delivery_finish(
            bindparam("delivery_id", type_=BigInteger),
            bindparam("attempt", type_=Integer),
            bindparam("ok", type_=Boolean),
            bindparam("status_code", type_=Integer),
            bindparam("error", type_=Text),
            bindparam("duration_ms", type_=Integer),
            bindparam("retry_seconds", type_=Double),
            bindparam("give_up_after", type_=Interval),
        )
    )
)
_RELEASE = compile_once(
    select(
        func.webhook_delivery_release(
            bindparam("delivery_id", type_=BigInteger), bindparam("attempt", type_=Integer)
        )
    )
)
# The age of the oldest delivery still to make: the oldest by seq is the oldest queued.
_OLDEST = compile_once(
    select(func.extract("epoch", func.now() - WebhookDelivery.created_at))
    .order_by(WebhookDelivery.seq)
    .limit(1)
)


async def create_webhook(
    conn: Connection, *, url: str, events: Sequence[str], description: str | None, secret: str
) -> tuple[int, str]:
    """Insert a subscription; its id and its JSON (without the secret)."""
    params = _INSERT.params(url=url, events=events, description=description, secret=secret)
    row = await (await conn.execute(_INSERT.sql, params)).fetchone()
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
    if not rows:
        return None
    page = [(json_, id_) for json_, id_ in rows if json_ is not None]
    more = len(page) > limit
    page = page[:limit]
    return [json_ for json_, _ in page], (int(page[-1][1]) if more else None)


@dataclass(frozen=True)
class Claimed:
    """A delivery this process now attempts (its lease runs until it finishes)."""

    delivery_id: int
    webhook_id: int
    seq: int
    attempt: int
    url: str
    secret: str
    event: str


async def claim(
    db: Database, *, max_rows: int, per_webhook: int, skip: list[int], lease_seconds: float
) -> list[Claimed]:
    """Claim due deliveries (schema.sql: webhook_deliveries_claim)."""
    params = _CLAIM.params(
        max_rows=max_rows, per_webhook=per_webhook, skip=skip, lease=lease_seconds
    )
    async with db.connection() as conn:
        rows = await (await conn.execute(_CLAIM.sql, params)).fetchall()
    return [Claimed(*row) for row in rows]


async def finish(
    db: Database,
    claimed: Claimed,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    retry_seconds: float,
    give_up_after: timedelta,
) -> str | None:
    """Log the attempt and deliver, reschedule or give up (webhook_delivery_finish).

    Returns the outcome (delivered, retry, failed), or None when the attempt was no longer
    this process's (lease expired, webhook deleted).
    """
    ok = status_code is not None and 200 <= status_code < 300
    params = _FINISH.params(
        delivery_id=claimed.delivery_id,
        attempt=claimed.attempt,
        ok=ok,
        status_code=status_code,
        error=error,
        duration_ms=duration_ms,
        retry_seconds=retry_seconds,
        give_up_after=give_up_after,
    )
    async with db.connection() as conn:
        row = await (await conn.execute(_FINISH.sql, params)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


async def release(db: Database, claimed: Claimed) -> None:
    """Hand a claimed delivery back unattempted (webhook_delivery_release)."""
    params = _RELEASE.params(delivery_id=claimed.delivery_id, attempt=claimed.attempt)
    async with db.connection() as conn:
        await conn.execute(_RELEASE.sql, params)


async def oldest_undelivered_seconds(db: Database) -> float:
    """How long the oldest delivery still to make has waited; 0 when none waits."""
    async with db.connection() as conn:
        row = await (await conn.execute(_OLDEST.sql, _OLDEST.params())).fetchone()
    return 0.0 if row is None else float(row[0])

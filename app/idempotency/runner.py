"""Idempotency-Key: run a write at most once per key and credential, replay its first response.

How a write endpoint uses it (POST /products does)::

    async def operation(conn: Connection) -> Response:
        product = await products.create_product(conn, new=body)   # SQL on `conn` only
        return Response(product.json, 201, ...)

    return await idempotency.run(
        operation, key=key, credential=credential, scope="POST /products",
        request=(body,),
    )

The contract of `operation`: it does all its database work on the connection it is given
and returns a plain Response (status, body and the Content-Type, Location and ETag headers
are what a replay gets back). Under a key it runs in a savepoint of the key's transaction;
without one, on an autocommit connection, so it must then be atomic on its own (one
statement). A 4xx ApiError or database error is a result: its problem is stored and
replayed like a success (what the operation did is undone with its savepoint). Anything
else (5xx, a bug, a lost connection) rolls everything back, the key included, so a retry
runs afresh. It may be called again: Database.write retries the whole unit on 40001/40P01.

Semantics (docs/api.md "Idempotency-Key"): the key row is inserted in the same READ COMMITTED
transaction as the work (`INSERT ... ON CONFLICT DO NOTHING RETURNING`), so it is committed
exactly when the effect is. A repeat of a finished request finds the stored response: same
request hash -> replay (`Idempotent-Replayed: true`), another -> 422 idempotency_key_reused.
A repeat of a request still running blocks on the first one's uncommitted key row for up
to `wait_seconds` (lock_timeout), then replays, or gets 409 request_in_progress; it never
runs the work twice. Keys belong to the credential that sent them (its digest is part of
the scope) and live `ttl` (at least 24 h): an older row is taken over as if it were new,
and `purging` deletes old rows in batches.
"""

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import psycopg
from pydantic import BaseModel
from starlette.responses import Response

from app.core import errors
from app.database import Connection, Database, savepoint
from app.idempotency import queries as keys

logger = logging.getLogger("app.idempotency")

Operation = Callable[[Connection], Awaitable[Response]]

# The response headers a replay repeats; the rest (date, length) are the replay's own.
_REPLAYED_HEADERS = ("content-type", "location", "etag")
PURGE_BATCH = 1000


def canonical_json(model: BaseModel) -> bytes:
    """The validated body in one canonical form: key order, `19.9` vs `"19.90"` do not count."""
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


# What makes a request "the same request": text, bytes, or a validated body (canonical JSON).
RequestPart = str | bytes | BaseModel


def request_hash(*parts: RequestPart) -> bytes:
    """SHA-256 over the parts of a request that make it "the same request"."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, BaseModel):
            part = canonical_json(part)
        data = part.encode() if isinstance(part, str) else part
        # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()


class Idempotency:
    """Exactly-once writes under a key, on top of Database.write."""

    def __init__(self, db: Database, *, ttl_seconds: int, wait_seconds: float) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl_seconds)
        self.wait_seconds = wait_seconds

    async def run(
        self,
        operation: Operation,
        *,
        key: str | None,
        credential: str,
        scope: str,
        request: tuple[RequestPart, ...],
        bulk: bool = False,
    ) -> Response:
        """Run `operation` (see the module docstring) and return its response.

        Without a key: as Database.write runs it (a single statement, or with `bulk` a
        transaction in a bulk slot). With a key: at most once per (credential, scope, key)
        within the TTL; `request` is hashed (request_hash) only then: a keyless write does
        not pay for a digest it would never compare. Raises IdempotencyKeyReused,
        RequestInProgress.
        """
        if key is None:
            return await self.db.write(
                operation, transaction=bulk, bulk=bulk, credential=credential
            )
        owner = f"{scope} {credential}".rstrip()
        digest = request_hash(*request)

        async def keyed(conn: Connection) -> Response:
            replay = await self._claim(conn, owner, key, digest)
            if replay is not None:
                return replay
            await keys.wait_as_usual(conn)
            # Row locks the operation takes (an adjusted product) are held from here to
            # COMMIT: through the one UPDATE below and nothing else, no outside awaits.
            response = await _outcome(conn, operation)
            headers = {n: response.headers[n] for n in _REPLAYED_HEADERS if n in response.headers}
            await keys.store(
                conn,
                scope=owner,
                key=key,
                status=response.status_code,
                headers=headers,
                body=bytes(response.body),
            )
            return response

        return await self.db.write(keyed, bulk=bulk, credential=credential)

    async def _claim(
        self, conn: Connection, scope: str, key: str, digest: bytes
    ) -> Response | None:
        """Own the key (None: go ahead and do the work) or the response to replay."""
        await keys.wait_at_most(conn, self.wait_seconds)
        try:
            for _ in range(3):
                if await keys.claim(conn, scope=scope, key=key, digest=digest):
                    return None
                stored = await keys.look_up(conn, scope=scope, key=key, ttl=self.ttl)
                if stored is None:
                    continue  # the holder rolled back or the row was purged: claim again
                if not stored.live:
                    if await keys.take_over(
                        conn, scope=scope, key=key, digest=digest, ttl=self.ttl
                    ):
                        return None
                    continue  # someone else took it over first: look again
                if stored.request_hash != digest:
                    raise errors.IdempotencyKeyReused()
                if stored.status is None:  # cannot be committed so; defensive
                    raise errors.RequestInProgress()
                return Response(
                    stored.body,
                    status_code=stored.status,
                    headers={**stored.headers, "Idempotent-Replayed": "true"},
                )
            raise errors.RequestInProgress()
        except psycopg.errors.LockNotAvailable as exc:
            raise errors.refused(exc) from None

    async def purge_expired(self, *, batch: int = PURGE_BATCH) -> int:
        """Delete keys older than the TTL, `batch` rows per transaction; return how many."""
        total = 0
        while True:
            async with self.db.connection() as conn:
                deleted = await keys.purge(conn, ttl=self.ttl, batch=batch)
            total += deleted
            if deleted < batch:
                return total
            await asyncio.sleep(0)  # let requests in between batches

    async def purge_every(self, interval: float) -> None:
        """Purge expired keys now and every `interval` seconds, until cancelled."""
        while True:
            purged = await self.purge_expired()
            if purged:
                logger.info("purged %d expired idempotency keys", purged)
            await asyncio.sleep(interval)


async def _outcome(conn: Connection, operation: Operation) -> Response:
    """The operation's response; a 4xx failure is an outcome too, with nothing kept."""
    try:
        async with savepoint(conn):
            return await operation(conn)
    except errors.ApiError as exc:
        failure = exc
    except psycopg.Error as exc:
        mapped = errors.from_database(exc)
        # 5xx: raised as it is, so 40001/40P01 reach the retry and the rest the handlers.
        if mapped is None or mapped.status >= 500:
            raise
        failure = mapped
    if failure.status >= 500:
        raise failure
    # 4xx problems carry no Retry-After except request_in_progress, which is never stored.
    return failure.response(retry_after=0)

"""Idempotency-Key: run a write at most once per key and replay its first response.

How a write endpoint uses it (POST /products and POST /products/{sku}/adjustments do;
POST /products/import can do the same)::

    @router.post("/things")
    async def create_thing(
        body: ThingCreate, idempotency: IdempotencyDep, key: IdempotencyKeyHeader = None
    ) -> Response:
        async def operation(conn: AsyncConnection[Any]) -> Response:
            row = await queries.insert_thing(conn, new=body)   # SQL on `conn` only
            return Response(row.json, 201, {"Location": ...}, media_type="application/json")

        return await idempotency.run(
            operation,
            scope="POST /things",                   # method + path template
            key=key,
            request_hash=request_hash(canonical_json(body)),  # or the raw bytes of the body
        )

The contract of `operation`:
- It does all its database work on the connection it is given and returns a plain
  Response (not a streaming one): status, body and the Content-Type, Location and ETag
  headers are what a replay gets back.
- Under a key it runs inside a transaction (its own `conn.transaction()` becomes a
  savepoint); without one, on an autocommit connection, so it must then be atomic on its
  own (one statement, or its own transaction).
- An ApiError or database error that maps to a 4xx (app/errors.py) is a result: the
  problem response is stored and replayed like a success (nothing the operation did
  survives, it ran in a savepoint). Anything else (5xx, a bug, a lost connection) rolls
  everything back, the key included, so a retry of the request runs afresh.
- It may be called again: serialization failures and deadlocks retry the whole unit,
  key claim included (app/retry.py), then answer 503 conflict_retry.

Semantics (API.md "Idempotency-Key"): the key row is inserted in the same READ COMMITTED
transaction as the work (`INSERT ... ON CONFLICT DO NOTHING RETURNING`), so it is
committed exactly when the effect is. A repeat of a finished request finds the stored
response: same request hash -> replay (with `Idempotent-Replayed: true`), another hash ->
422 idempotency_key_reused. A repeat of a request still running blocks on the first one's
uncommitted key row for up to `wait_seconds` (lock_timeout), then replays its response,
or gets 409 request_in_progress if it is still running; it never runs the work twice.
Keys live `ttl_seconds` (at least 24 h): an older row is taken over as if it were new,
and `purge_expired` (run by `purging` in the app's lifespan) deletes old rows in batches.
"""

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Header, Request
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel
from starlette.responses import Response

from app.errors import ApiError, database_problem, problem
from app.retry import retrying

logger = logging.getLogger("app.idempotency")

Operation = Callable[[AsyncConnection[Any]], Awaitable[Response]]

# Printable ASCII (space included, though HTTP strips it at either end), 1-255 characters.
KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=KEY_PATTERN,
        description="Makes the request safe to retry: 1-255 printable ASCII characters.",
    ),
]

# The response headers a replay repeats; the rest (date, length) are the replay's own.
_REPLAYED_HEADERS = ("content-type", "location", "etag")
PURGE_BATCH = 1000

_CLAIM = """
    INSERT INTO idempotency_keys (scope, key, request_hash) VALUES (%s, %s, %s)
    ON CONFLICT (scope, key) DO NOTHING
    RETURNING true
"""
_LOOK_UP = """
    SELECT request_hash, status, headers, body,
           created_at > now() - make_interval(secs => %s) AS live
    FROM idempotency_keys WHERE scope = %s AND key = %s
"""
# An expired key is reused in place; a concurrent taker blocks on the row and then finds
# it live (the WHERE is re-checked on the newest version) and replays.
_TAKE_OVER = """
    UPDATE idempotency_keys
    SET request_hash = %s, status = NULL, headers = NULL, body = NULL, created_at = now()
    WHERE scope = %s AND key = %s AND created_at <= now() - make_interval(secs => %s)
    RETURNING true
"""
_STORE = """
    UPDATE idempotency_keys SET status = %s, headers = %s, body = %s
    WHERE scope = %s AND key = %s
"""
# SKIP LOCKED: several workers purging at once each take different rows, and a key being
# taken over right now is left for the next round.
_PURGE = """
    WITH doomed AS (
        SELECT scope, key FROM idempotency_keys
        WHERE created_at <= now() - make_interval(secs => %s)
        ORDER BY created_at
        LIMIT %s
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM idempotency_keys k USING doomed d
    WHERE k.scope = d.scope AND k.key = d.key
"""


def canonical_json(model: BaseModel) -> bytes:
    """The validated body in one canonical form: key order, `19.9` vs `"19.90"` do not count."""
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def request_hash(*parts: str | bytes) -> bytes:
    """SHA-256 over the parts of a request that make it "the same request"."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()


def _replay(status: int, headers: dict[str, str], body: bytes) -> Response:
    return Response(body, status_code=status, headers={**headers, "Idempotent-Replayed": "true"})


def _in_progress(retry_after: int) -> ApiError:
    return ApiError(
        409,
        "request_in_progress",
        "A request with this Idempotency-Key is still being processed. Retry later.",
        headers={"Retry-After": str(retry_after)},
    )


class Idempotency:
    """The write paths' runner: bounded conflict retries, and exactly-once under a key."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        ttl_seconds: int,
        wait_seconds: float,
        attempts: int,
        retry_after: int,
    ) -> None:
        self.pool = pool
        self.ttl_seconds = ttl_seconds
        self.wait_seconds = wait_seconds
        self.attempts = attempts
        self.retry_after = retry_after

    async def run(
        self,
        operation: Operation,
        *,
        scope: str = "",
        key: str | None = None,
        request_hash: bytes = b"",
    ) -> Response:
        """Run `operation` (see the module docstring) and return its response.

        Without a key: once, on an autocommit connection, retried on 40001/40P01.
        With a key: at most once per (scope, key) within the TTL; see the module docstring.
        Raises ApiError 422 idempotency_key_reused, 409 request_in_progress.
        """
        if key is None:

            async def plain() -> Response:
                async with self.pool.connection() as conn:
                    return await operation(conn)

            return await retrying(plain, attempts=self.attempts)

        async def keyed() -> Response:
            async with self.pool.connection() as conn, conn.transaction():
                replay = await self._claim(conn, scope, key, request_hash)
                if replay is not None:
                    return replay
                await conn.execute("SET LOCAL lock_timeout TO DEFAULT")
                # Row locks the operation takes (an adjusted product) are held from here to
                # COMMIT: through the one UPDATE below and nothing else, no outside awaits.
                response = await self._outcome(conn, operation)
                headers = {
                    name: response.headers[name]
                    for name in _REPLAYED_HEADERS
                    if name in response.headers
                }
                await conn.execute(
                    _STORE, (response.status_code, Jsonb(headers), response.body, scope, key)
                )
                return response

        return await retrying(keyed, attempts=self.attempts)

    async def _claim(
        self, conn: AsyncConnection[Any], scope: str, key: str, digest: bytes
    ) -> Response | None:
        """Own the key (None: go ahead and do the work) or the response to replay."""
        # Only the claim may wait for a concurrent holder of the key, and only so long;
        # the work itself runs with the normal lock_timeout.
        await conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", (f"{int(self.wait_seconds * 1000)}ms",)
        )
        try:
            for _ in range(3):
                if await (await conn.execute(_CLAIM, (scope, key, digest))).fetchone():
                    return None
                cur = await conn.execute(_LOOK_UP, (self.ttl_seconds, scope, key))
                row = await cur.fetchone()
                if row is None:
                    continue  # the holder rolled back or the row was purged: claim again
                stored_hash, status, headers, body, live = row
                if not live:
                    taken = await conn.execute(_TAKE_OVER, (digest, scope, key, self.ttl_seconds))
                    if await taken.fetchone():
                        return None
                    continue  # someone else took it over first: look again
                if bytes(stored_hash) != digest:
                    raise ApiError(
                        422,
                        "idempotency_key_reused",
                        "This Idempotency-Key was used with a different request.",
                    )
                if status is None:  # cannot be committed so; defensive
                    raise _in_progress(self.retry_after)
                return _replay(status, headers or {}, bytes(body or b""))
            raise _in_progress(self.retry_after)
        except psycopg.errors.LockNotAvailable:
            raise _in_progress(self.retry_after) from None

    async def _outcome(self, conn: AsyncConnection[Any], operation: Operation) -> Response:
        """The operation's response; a 4xx failure is an outcome too, with nothing kept."""
        try:
            async with conn.transaction():  # a savepoint: a failed statement undoes only this
                return await operation(conn)
        except ApiError as exc:
            failure = exc
        except psycopg.Error as exc:
            mapped = database_problem(exc, retry_after=self.retry_after)
            # 5xx: raised as it is, so 40001/40P01 reach the retry and the rest the handlers.
            if mapped is None or mapped.status >= 500:
                raise
            failure = mapped
        if failure.status >= 500:
            raise failure
        return problem(
            failure.status,
            failure.code,
            failure.detail,
            headers=failure.headers,
            **failure.extra,
        )

    async def purge_expired(self, *, batch: int = PURGE_BATCH) -> int:
        """Delete keys older than the TTL, `batch` rows per transaction; return how many."""
        total = 0
        while True:
            async with self.pool.connection() as conn:
                cur = await conn.execute(_PURGE, (self.ttl_seconds, batch))
            deleted: int = cur.rowcount
            total += deleted
            if deleted < batch:
                return total
            await asyncio.sleep(0)  # let requests in between batches

    @asynccontextmanager
    async def purging(self, interval: float) -> AsyncIterator[None]:
        """Purge expired keys now and every `interval` seconds until the block exits."""

        async def purge_forever() -> None:
            while True:
                try:
                    purged = await self.purge_expired()
                    if purged:
                        logger.info("purged %d expired idempotency keys", purged)
                except Exception:
                    # The database may be down; the next round tries again.
                    logger.warning("purging expired idempotency keys failed", exc_info=True)
                await asyncio.sleep(interval)

        task = asyncio.create_task(purge_forever(), name="idempotency-purge")
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


# async: FastAPI runs a plain `def` dependency in its thread pool, a costly hop on every
# write (py-spy under bench/ load).
async def get_idempotency(request: Request) -> Idempotency:
    idempotency: Idempotency = request.state.idempotency
    return idempotency


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]

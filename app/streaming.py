"""Responses that stream a COPY ... TO STDOUT from a pooled connection with flat memory."""

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from psycopg import AsyncConnection, AsyncCopy
from psycopg_pool import AsyncConnectionPool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.errors import ApiError

# Bytes per network write: one write per row was 8x slower than batches of ~1000 rows.
CHUNK_BYTES = 256 * 1024
# How long a cancelled COPY may take to wind down before its connection is closed instead.
EXIT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Framing:
    """How COPY rows (each without its newline) become a body: JSON array, NDJSON or CSV."""

    first: bytes  # before the first chunk
    between: bytes  # before every later chunk
    sep: bytes  # between rows inside a chunk
    after: bytes  # after every chunk
    close: bytes  # after the last chunk
    empty: bytes  # the whole body when there are no rows


JSON_ARRAY = Framing(b"[", b",", b",", b"", b"]", b"[]")
NDJSON = Framing(b"", b"", b"\n", b"\n", b"", b"")


def csv_framing(header: str) -> Framing:
    # RFC 4180 ends records with CRLF; COPY ends them with LF, which we replace per row.
    head = header.encode() + b"\r\n"
    return Framing(head, b"", b"\r\n", b"\r\n", b"", head)


class BulkSlots:
    """A share of the pool for exports and imports, so they cannot starve other requests.

    Long-running bulk work holds a connection for seconds to minutes; at most `slots` of
    them run at once per process, the rest wait up to `timeout` and then get 503.
    """

    def __init__(self, slots: int, *, timeout: float, retry_after: int) -> None:
        self.slots = slots
        self._semaphore = anyio.Semaphore(slots)
        self._timeout = timeout
        self._retry_after = retry_after

    @asynccontextmanager
    async def hold(self) -> AsyncGenerator[None, None]:
        with anyio.move_on_after(self._timeout) as waiting:
            await self._semaphore.acquire()
        if waiting.cancelled_caught:
            raise ApiError(
                503,
                "database_unavailable",
                "Too many exports and imports are running. Retry later.",
                headers={"Retry-After": str(self._retry_after)},
            )
        try:
            yield
        finally:
            self._semaphore.release()


# Rows per network write for JsonArrayStream (a query, not a COPY): one write per row was
# 8x slower than batches of ~1000.
BATCH_ROWS = 1000


class JsonArrayStream(Response):
    """A JSON array whose elements are the single text column of a query, streamed.

    The connection is taken in __call__ and given back in its finally block, so it is held
    exactly while the body streams, whatever happens. The first batch is read before the
    status line goes out: a database that is down or a failing query still becomes a
    problem response (503, 500) instead of a truncated 200. A client that goes away stops
    the query; psycopg cancels it and the pool replaces that connection.
    """

    media_type = "application/json"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        sql: str,
        params: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content=None, headers=headers, media_type=self.media_type)
        # The length is unknown until the end: stream with chunked transfer encoding.
        del self.headers["content-length"]
        self._pool = pool
        self._sql = sql
        self._params = params

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._pool.connection() as conn:
            rows = conn.cursor().stream(self._sql, self._params, size=BATCH_ROWS)
            batches = _batches(rows)
            try:
                first = await anext(batches, None)
                await _start(send, self.status_code, self.raw_headers)
                if first is None:
                    await send({"type": "http.response.body", "body": b"[]"})
                    return
                await _send_chunks(receive, send, _then(first, batches, b"]"))
            finally:
                await batches.aclose()
                await rows.aclose()


async def _batches(rows: AsyncIterator[tuple[Any, ...]]) -> AsyncGenerator[bytes, None]:
    """A JSON array's text in pieces of up to BATCH_ROWS rows' first column, less the `]`."""
    batch: list[str] = []
    prefix = "["
    async for row in rows:
        batch.append(row[0])
        if len(batch) == BATCH_ROWS:
            yield (prefix + ",".join(batch)).encode()
            batch.clear()
            prefix = ","
    if batch:
        yield (prefix + ",".join(batch)).encode()


async def _start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _then(
    first: bytes, rest: AsyncIterator[bytes], last: bytes
) -> AsyncGenerator[bytes, None]:
    yield first
    async for chunk in rest:
        yield chunk
    yield last


async def _send_chunks(receive: Receive, send: Send, chunks: AsyncIterator[bytes]) -> None:
    """Send every chunk, then end the body; a client that disconnects stops it midway.

    The sender runs beside a watcher of `receive`: when the client goes away the sender
    is cancelled at its next await, which is what stops the query producing the chunks
    (the caller closes that query's generator in its finally block).
    """
    async with anyio.create_task_group() as tasks:

        async def send_all() -> None:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                # A checkpoint per chunk: a disconnect is noticed mid-table.
                await anyio.lowlevel.checkpoint()
            await send({"type": "http.response.body", "body": b""})
            tasks.cancel_scope.cancel()

        async def stop_on_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tasks.cancel_scope.cancel()

        tasks.start_soon(send_all)
        tasks.start_soon(stop_on_disconnect)


class CopyStream(Response):
    """The rows of a COPY ... TO STDOUT, framed (see Framing) and streamed in chunks.

    The connection is taken in __call__ (inside a bulk slot) and given back in its finally
    block, so it is held exactly while the body streams. The first chunk is read before
    the status line goes out: a database that is down or a failing query still becomes a
    problem response (503, 500) instead of a truncated 200. A client that goes away stops
    the query: psycopg cancels the COPY and drains it, so the connection goes back clean
    (or, if that is interrupted, the pool sees it is not idle and replaces it).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        slots: BulkSlots,
        sql: str,
        params: Any,
        *,
        framing: Framing,
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content=None, headers=headers, media_type=media_type)
        # The length is unknown until the end: stream with chunked transfer encoding.
        del self.headers["content-length"]
        self._pool = pool
        self._slots = slots
        self._sql = sql
        self._params = params
        self._framing = framing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._slots.hold(), self._pool.connection() as conn:
            chunks = _chunks(conn, self._sql, self._params, self._framing)
            try:
                first = await anext(chunks, None)
                await _start(send, self.status_code, self.raw_headers)
                if first is None:
                    await send({"type": "http.response.body", "body": self._framing.empty})
                    return
                await _send_chunks(receive, send, _then(first, chunks, self._framing.close))
            finally:
                # Shielded (the request may be being cancelled too): the COPY is cancelled
                # and drained and the transaction rolled back, so the connection goes back
                # idle. Bounded: past EXIT_TIMEOUT psycopg closes it and the pool replaces it.
                with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_TIMEOUT):
                    await chunks.aclose()


async def _chunks(
    conn: AsyncConnection[Any], sql: str, params: Any, framing: Framing
) -> AsyncGenerator[bytes, None]:
    """Framed chunks of about CHUNK_BYTES; one COPY message is one row ending in LF."""
    prefix = framing.first
    # An export of millions of rows is one statement that may outlast the role's
    # statement_timeout (db/roles.sql); lifted for this transaction only.
    async with conn.transaction():
        await conn.execute("SET LOCAL statement_timeout = 0")
        async with _exit_shielded(conn.cursor().copy(sql, params)) as copy:
            while True:
                # Shielded: a cancellation landing inside psycopg's wait makes it close the
                # connection; here it waits for the next yield, and the COPY ends cleanly.
                with anyio.CancelScope(shield=True):
                    rows = await _read_chunk(copy)
                if not rows:
                    return
                # No unshielded await in here: a cancellation can only arrive at this yield,
                # from where the exit is shielded (CopyStream.__call__), never midway.
                yield prefix + framing.sep.join(rows) + framing.after
                prefix = framing.between


async def _read_chunk(copy: AsyncCopy) -> list[Any]:
    """Rows (without their LF) until about CHUNK_BYTES are read or the COPY ends."""
    rows: list[Any] = []
    size = 0
    while size < CHUNK_BYTES and (data := await copy.read()):
        rows.append(data[:-1])
        size += len(data)
    return rows


@asynccontextmanager
async def _exit_shielded(
    copy: AbstractAsyncContextManager[AsyncCopy],
) -> AsyncGenerator[AsyncCopy, None]:
    """Enter a COPY; leave it even when the task is being cancelled (client gone).

    Leaving an unfinished COPY TO sends a cancel request and drains what is in flight, so
    the connection goes back to the pool idle. Cancelled midway, psycopg would close the
    connection instead. Bounded: past EXIT_TIMEOUT the connection is closed after all.
    """
    entered = await copy.__aenter__()
    try:
        yield entered
    except BaseException as exc:
        with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_TIMEOUT):
            await copy.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await copy.__aexit__(None, None, None)

"""Responses that stream rows from PostgreSQL with flat memory, inside a bulk slot.

The connection is taken in __call__ (Database.bulk: a slot, a transaction, no statement
timeout) and given back in its finally block, so it is held exactly while the body
streams. The first chunk is read before the status line goes out: a database that is down
or a failing query still becomes a problem response instead of a truncated 200. A client
that goes away stops the query (psycopg cancels it; the connection goes back clean or is
replaced); one that stops reading is cut off by the send deadline (app.core.http.limits).
"""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import psycopg
from psycopg import AsyncCopy, pq
from psycopg.abc import Buffer, PQGen
from psycopg.waiting import Wait
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.core.access import ANONYMOUS, CALLER_KEY, Caller
from app.core.http.formats import FRAMINGS, Format, Framing
from app.core.http.limits import BULK_KEY
from app.core.reads import FALLBACK, Reads
from app.database import Bound, Connection, Database

# Bytes per network write: a write per row costs a send each (docs/performance.md).
CHUNK_BYTES = 256 * 1024
# Rows per network write when streaming a query's rows (not a COPY).
BATCH_ROWS = 1000
# How long a cancelled COPY may take to wind down before its connection is closed instead.
EXIT_TIMEOUT = 5.0

_JSON_ARRAY = FRAMINGS[Format.JSON]


class _Streamed(Response):
    """A response whose body is produced by `chunks(conn)` on a bulk connection.

    Given `Reads`, it runs on the replica while that is usable; a replica that fails before
    the first chunk (stopped, restarting, no connection in time) leaves it to the primary.
    """

    def __init__(self, db: Database | Reads, *, media_type: str, framing: Framing) -> None:
        super().__init__(content=None, media_type=media_type)
        # The length is unknown until the end: stream with chunked transfer encoding.
        del self.headers["content-length"]
        self._reads = db if isinstance(db, Reads) else Reads(db, None)
        self._framing = framing

    def chunks(self, conn: Connection) -> AsyncGenerator[bytes, None]:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # It holds a bulk slot: its client is held to the rate floor (app.core.http.limits), and the
        # slot counts against the token's share.
        scope[BULK_KEY] = True
        caller: Caller | None = scope.get(CALLER_KEY)
        credential = ANONYMOUS if caller is None else caller.credential
        *first, last = self._reads.targets()
        for target in first:
            try:
                await self._respond(target, credential, receive, send)
                return
            except _NotStarted as failed:
                self._reads.failed(failed.cause)
        try:
            await self._respond(last, credential, receive, send)
        except _NotStarted as failed:
            raise failed.cause from None

    async def _respond(
        self, target: tuple[str, Database], credential: str, receive: Receive, send: Send
    ) -> None:
        """Stream from `target`; a failure before the first chunk raises _NotStarted."""
        name, db = target
        started = False
        try:
            async with db.bulk(credential) as conn:
                chunks = self.chunks(conn)
                try:
                    first, gone = await _first_chunk(chunks, conn, receive)
                    if gone:
                        return  # the client left: nobody to answer
                    started = True
                    self._reads.served(name)
                    await send(
                        {
                            "type": "http.response.start",
                            "status": self.status_code,
                            "headers": self.raw_headers,
                        }
                    )
                    if first is None:
                        await send({"type": "http.response.body", "body": self._framing.empty})
                        return
                    await _send_chunks(receive, send, _then(first, chunks, self._framing.close))
                finally:
                    # Shielded (the request may be being cancelled too): the query is
                    # cancelled and drained, so the connection goes back idle. Bounded: past
                    # EXIT_TIMEOUT psycopg closes it and the pool replaces it.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_TIMEOUT):
                        await chunks.aclose()
        except FALLBACK as exc:
            if started:
                raise
            raise _NotStarted(exc) from exc


class _NotStarted(Exception):
    """Nothing was sent yet: another database may still serve the whole response."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class CopyStream(_Streamed):
    """The rows of a COPY ... TO STDOUT, framed (see formats.Framing), in ~CHUNK_BYTES."""

    def __init__(
        self, db: Database | Reads, query: Bound, *, framing: Framing, media_type: str
    ) -> None:
        super().__init__(db, media_type=media_type, framing=framing)
        self._statement, self._params = query

    async def chunks(self, conn: Connection) -> AsyncGenerator[bytes, None]:
        framing = self._framing
        prefix = framing.first
        async with _exit_shielded(conn.cursor().copy(self._statement, self._params)) as copy:
            # The first rows are waited for unshielded: a client that leaves meanwhile has the
            # query cancelled in the server (_first_chunk), and the COPY fails here.
            rows, more = await _read_chunk(copy)
            while rows:
                # No unshielded await in here: a cancellation can only arrive at this yield,
                # from where the exit is shielded (__call__), never midway.
                yield prefix + _framed(rows, framing)
                prefix = framing.between
                if not more:
                    return
                # Shielded: a cancellation landing inside psycopg's wait mid-stream would
                # close the connection; here it waits for the next yield, and the COPY ends
                # cleanly.
                with anyio.CancelScope(shield=True):
                    rows, more = await _read_chunk(copy)


class JsonArrayStream(_Streamed):
    """A JSON array whose elements are the single text column of a query, in batches."""

    def __init__(self, db: Database, query: Bound) -> None:
        super().__init__(db, media_type="application/json", framing=_JSON_ARRAY)
        self._statement, self._params = query

    async def chunks(self, conn: Connection) -> AsyncGenerator[bytes, None]:
        rows = conn.cursor().stream(self._statement, self._params, size=BATCH_ROWS)
        assert isinstance(rows, AsyncGenerator)
        prefix = b"["
        batch: list[str] = []
        try:
            async for (text,) in rows:
                batch.append(text)
                if len(batch) == BATCH_ROWS:
                    yield prefix + ",".join(batch).encode()
                    batch.clear()
                    prefix = b","
            if batch:
                yield prefix + ",".join(batch).encode()
        finally:
            await rows.aclose()


async def _then(
    first: bytes, rest: AsyncIterator[bytes], last: bytes
) -> AsyncGenerator[bytes, None]:
    yield first
    async for chunk in rest:
        yield chunk
    yield last


async def _first_chunk(
    chunks: AsyncIterator[bytes], conn: Connection, receive: Receive
) -> tuple[bytes | None, bool]:
    """The first chunk (None: no rows), and whether the client left before it came.

    The client is watched from the start: one that leaves while the query works towards
    its first row (a report's aggregate, a selective export, a lock) has the query
    cancelled in the server, and its connection is kept. (Cancelling this task instead
    would not do: psycopg's own cancel request would be cancelled with it, and the
    connection closed with the query still running in the server.)
    """
    gone = False

    async def cancel_on_disconnect() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        await conn.cancel_safe()

    watcher = asyncio.create_task(cancel_on_disconnect())
    try:
        first = await anext(chunks, None)
    except psycopg.errors.QueryCanceled:
        if gone:
            return None, True
        raise
    finally:
        # A cancel request under way is let finish, never cut: PgBouncer 1.18 (Debian 12)
        # exits on a cancel client that leaves while its request is pending (pgbouncer
        # #801, #822). And the connection goes back to the pool only once no cancel
        # request for it is on its way.
        if not gone:
            watcher.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(watcher, return_exceptions=True)
    return first, gone


async def _send_chunks(receive: Receive, send: Send, chunks: AsyncIterator[bytes]) -> None:
    """Send every chunk, then end the body; a client that disconnects stops it midway.

    The sender runs beside a watcher of `receive`: when the client goes away the sender is
    cancelled at its next await, which is what stops the query producing the chunks.
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


async def _read_chunk(copy: AsyncCopy) -> tuple[list[Buffer], bool]:
    """Rows (each with its LF) until about CHUNK_BYTES are read or the COPY ends, and
    whether more may follow.

    What libpq already holds is taken in a plain loop of C calls: copy.read() per row (an
    await, a generator and psycopg's wait machinery each) was most of an export's CPU, and
    on 2 cores that CPU is taken from the database. copy.read() is only awaited when
    nothing is buffered: it waits for the socket, and it is what ends the COPY.
    """
    pgconn = copy.connection.pgconn
    get = pgconn.get_copy_data
    rows: list[Buffer] = []
    size = 0
    while size < CHUNK_BYTES:
        nbytes, data = get(1)
        if nbytes == 0:
            pgconn.consume_input()  # never blocks: libpq's socket is non-blocking
            nbytes, data = get(1)
        if nbytes > 0:
            rows.append(data)
            size += nbytes
        elif nbytes == 0:
            if not (waited := await copy.read()):
                return rows, False
            rows.append(waited)
            size += len(waited)
        else:
            # The COPY ended (or failed) while its rows were read here: finish it as
            # copy.read() would have, so that psycopg's copy context sees it ended.
            await copy.connection.wait(_end_of_copy(copy))
            return rows, False
    return rows, True


def _end_of_copy(copy: AsyncCopy) -> PQGen[None]:
    """After get_copy_data said -1: collect the COPY's result, raise its error if any."""
    pgconn = copy.connection.pgconn
    results = []
    while True:
        while pgconn.is_busy():
            yield Wait.R
            pgconn.consume_input()
        if (result := pgconn.get_result()) is None:
            break
        results.append(result)
    copy._finished = True  # psycopg's own flag: leaving the copy block must not read again
    for result in results:
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(result, encoding=copy.connection.info.encoding)


def _framed(rows: list[Buffer], framing: Framing) -> bytes:
    """The rows, each without its LF, separated and closed as the framing says.

    When the only LFs are the rows' own ends (no quoted newline in a CSV field; JSON never
    has one), one C-speed replace does it: the same bytes as joining the cut rows.
    """
    joined = b"".join(rows)
    if joined.count(b"\n") == len(rows):
        return joined[:-1].replace(b"\n", framing.sep) + framing.after
    return framing.sep.join(bytes(row)[:-1] for row in rows) + framing.after


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

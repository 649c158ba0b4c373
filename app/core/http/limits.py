"""Request bodies and response writes, bounded in one place, before the app sees them.

BodyGuard holds every request body to a limit chosen by method and route: the bulk import
(`POST /products/import`) streams under its own large limit; every other body, whatever its
path or method, is held to the JSON limit and, for POST/PUT/PATCH, must be JSON. A body
that stalls is cut off (408); bodies of requests without a checked token are read a few at
a time (503 past that). The route that takes a JSON body (JsonRoute) parses it, once, as
strict JSON with a bounded number of values: a path no route serves never costs a parse.
Prices and other decimals are parsed as Decimal, never through a binary float.
SendDeadline ends a response whose client stops taking it.
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anyio
from fastapi import Request, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.access import CALLER_KEY
from app.core.errors import (
    ApiError,
    PayloadTooLarge,
    RequestTimeout,
    ServerBusy,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.core.http.matching import route_methods
from app.core.http.shortcuts import ShortcutRoute
from app.core.observability import REQUEST_ID_KEY

logger = logging.getLogger("app.limits")

# Set in the scope by a response that holds a bulk slot (app.core.http.streaming): SendDeadline then
# holds its client to the rate floor too.
BULK_KEY = "inventory.bulk"

# Methods whose bodies the API reads as JSON.
_JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})
# The one route whose body is not JSON: CSV or NDJSON, streamed to PostgreSQL, its media
# type checked by the route itself.
IMPORT_ROUTE = ("POST", "/products/import")
# The most values, members and separators a JSON body may hold, counted from its bytes
# before it is parsed ("," "[" "{", inside strings too): a body of this API holds at most a
# few hundred, and parsing is linear in them. A 1 MiB body of `[{},{},...]` (350,000 empty
# objects) took half a second of a worker's CPU to parse and check; 10,000 take a few ms.
JSON_VALUES_MAX = 10_000


def _is_json(content_type: bytes) -> bool:
    """application/json or application/<anything>+json, with at most a UTF-8 charset."""
    media, *params = content_type.decode("latin-1").split(";")
    media = media.strip().lower()
    if not (
        media == "application/json"
        or (media.startswith("application/") and media.endswith("+json"))
    ):
        return False
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in {
            "utf-8",
            "utf8",
        }:
            return False
    return True


def _reject_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of duplicate keys silently; two values for one field are
    # ambiguous, so they are refused.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:50]!r}")
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Unstorable(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _check_strings(value: Any) -> None:
    """Raise _Unstorable naming the first string PostgreSQL could not store.

    PostgreSQL text holds neither NUL nor lone surrogates (psycopg cannot even encode them):
    refuse them here, for every field of every endpoint, rather than fail in the driver.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise _Unstorable(path or "body", "must not contain NUL characters")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _Unstorable(path or "body", "must not contain lone surrogates") from None
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((path or "body", key))
                stack.append((f"{path}.{key}" if path else key, child))
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}" if path else str(i), child) for i, child in enumerate(item))


def parse_json(body: bytes) -> Any:
    """A body parsed as strict JSON: RFC 8259, UTF-8, unique keys, storable strings, and
    every number with a fraction or exponent as an exact Decimal.

    Raises ValidationFailed naming the field (or `body`) otherwise, and for a body with
    more than JSON_VALUES_MAX values, members or separators, before parsing it.
    """
    if body.count(b",") + body.count(b"[") + body.count(b"{") > JSON_VALUES_MAX:
        raise ValidationFailed.field(
            "body",
            f"holds more than {JSON_VALUES_MAX} values, members or separators",
            "The request body is invalid.",
        )
    try:
        value = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_reject_pairs,
            parse_constant=_reject_constant,
            parse_float=Decimal,
        )
        _check_strings(value)
    except UnicodeDecodeError:
        raise ValidationFailed.field(
            "body", "is not UTF-8", "The request body is invalid."
        ) from None
    except RecursionError:
        raise ValidationFailed.field(
            "body", "is nested too deeply", "The request body is invalid."
        ) from None
    except _Unstorable as exc:
        raise ValidationFailed.field(exc.field, str(exc), "The request body is invalid.") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, NaN, ints past 4300 digits
        raise ValidationFailed.field(
            "body", f"is not valid JSON: {str(exc)[:200]}", "The request body is invalid."
        ) from None
    return value


class RateFloor:
    """How slow a bulk transfer's client may be: a bucket of waiting time.

    It starts with `grace` seconds; every second spent waiting on the client (a send it
    does not take, a body chunk that does not come) takes one out, every byte moved puts
    1/`min_rate` s back, never above `grace`. Empty, the client is too slow. A client
    moving `min_rate` bytes/s or more never empties it; one moving r < min_rate is cut off
    after grace / (1 - r/min_rate) seconds of waiting; one that stops, after what is left.
    The cap means a fast start (socket buffers filling at once) buys no slow minutes later.
    """

    def __init__(self, *, min_rate: int, grace: float) -> None:
        self.min_rate = min_rate
        self.grace = grace
        self.left = grace

    def allows(self, chunk: bytes) -> float:
        """How long sending `chunk` may wait: what is left, and what the chunk earns."""
        return self.left + len(chunk) / self.min_rate

    def moved(self, waited: float, nbytes: int) -> bool:
        """Account one transfer; False when the client has now been too slow."""
        self.left = min(self.grace, self.left - waited + nbytes / self.min_rate)
        return self.left > 0


class BodyGuard:
    """Pure ASGI middleware: 408, 413 and 415 for hostile bodies, before the app reads them.

    JSON bodies of requests that carry no checked token (app.core.access.TokenCheck: an open
    API, or a path no token guards) are read at most `unauthenticated_bodies` at once per
    process; one that finds no slot within the body deadline (`timeout`, unless
    `unauthenticated_wait`) is answered 503. Not a shorter wait: reading a body that has
    arrived takes microseconds, but on a busy event loop a burst of 60 small writes to an
    open API waited over a second for their turn and a fixed one-second wait refused them.
    A slot is held at most the body deadline, so a queue only ever waits on bodies that
    trickle.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        json_max_bytes: int,
        import_max_bytes: int,
        timeout: float,
        retry_after: int,
        unauthenticated_bodies: int,
        min_rate: int,
        grace: float,
        routes: Sequence[BaseRoute] | None = None,
        unauthenticated_wait: float | None = None,
    ) -> None:
        self.app = app
        self.unauthenticated_wait = (
            timeout if unauthenticated_wait is None else unauthenticated_wait
        )
        self.min_rate = min_rate
        self.grace = grace
        self.routes = routes
        self.json_max_bytes = json_max_bytes
        self.import_max_bytes = import_max_bytes
        self.timeout = timeout
        self.retry_after = retry_after
        self._unauthenticated = anyio.Semaphore(unauthenticated_bodies)

    async def _refuse(self, error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        await error.response(retry_after=self.retry_after)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        content_type: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"content-type":
                content_type = value
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        streamed = (scope["method"], scope["path"]) == IMPORT_ROUTE
        limit = self.import_max_bytes if streamed else self.json_max_bytes
        if length is not None and length > limit:
            await self._refuse(PayloadTooLarge(limit), scope, receive, send)
            return
        if streamed or scope["method"] not in _JSON_METHODS:
            # Counted as it streams (a body the app ignores is counted all the same); the
            # import holds a bulk slot while it streams: its client is held to the floor.
            floor = RateFloor(min_rate=self.min_rate, grace=self.grace) if streamed else None
            await self._counted(scope, receive, send, limit, floor)
            return
        if (length or chunked) and (content_type is None or not _is_json(content_type)):
            if not self._served(scope):
                await self._counted(scope, receive, send, limit, None)
                return
            detail = (
                "Send JSON: Content-Type application/json (UTF-8)."
                if content_type is None
                else "This endpoint takes application/json (UTF-8)."
            )
            await self._refuse(UnsupportedMediaType(detail), scope, receive, send)
            return
        try:
            if CALLER_KEY in scope or not (length or chunked):
                body = await self._read(receive, limit)
            else:
                async with self._unauthenticated_slot():
                    body = await self._read(receive, limit)
        except ApiError as error:
            await self._refuse(error, scope, receive, send)
            return
        except _Disconnected:
            return  # nobody to answer
        await self.app(scope, _replay(body, receive), send)

    @asynccontextmanager
    async def _unauthenticated_slot(self) -> AsyncIterator[None]:
        with anyio.move_on_after(self.unauthenticated_wait) as waiting:
            await self._unauthenticated.acquire()
        if waiting.cancelled_caught:
            raise ServerBusy("Too many request bodies are being received. Retry later.")
        try:
            yield
        finally:
            self._unauthenticated.release()

    def _served(self, scope: Scope) -> bool:
        """Whether a route takes this method on this path: if not, the router's 405 (or
        404) is the answer, whatever the body. Asked only before refusing a body."""
        if self.routes is None:  # no router behind the guard: it decides alone
            return True
        return scope["method"] in route_methods(self.routes, scope["path"])

    async def _read(self, receive: Receive, limit: int) -> bytes:
        """The whole body, within the limit and the deadline (a JSON body is small)."""
        body = bytearray()
        with anyio.move_on_after(self.timeout) as waiting:
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    raise _Disconnected
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    raise PayloadTooLarge(limit)
        if waiting.cancelled_caught:
            raise RequestTimeout(self.timeout)
        return bytes(body)

    async def _counted(
        self, scope: Scope, receive: Receive, send: Send, limit: int, floor: RateFloor | None
    ) -> None:
        received = 0
        response_started = False
        body_done = False

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                # Past the body, receive() only waits for the client to leave (a streamed
                # export watches it for minutes): no deadline, or long exports were cut off.
                return await receive()
            deadline = self.timeout if floor is None else min(self.timeout, floor.left)
            started = time.monotonic()
            with anyio.move_on_after(deadline) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                if deadline < self.timeout:
                    raise RequestTimeout(self.timeout, min_rate=self.min_rate)
                raise RequestTimeout(self.timeout)
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                received += chunk
                if received > limit:
                    raise PayloadTooLarge(limit)
                body_done = not message.get("more_body", False)
                waited = time.monotonic() - started
                if floor is not None and not body_done and not floor.moved(waited, chunk):
                    raise RequestTimeout(self.timeout, min_rate=self.min_rate)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except (PayloadTooLarge, RequestTimeout) as error:
            if response_started:
                raise
            await self._refuse(error, scope, receive, send)
        except BaseExceptionGroup as group:
            # The app read the body in a task group: the limit is still the answer.
            matched = group.subgroup((PayloadTooLarge, RequestTimeout))
            if response_started or matched is None:
                raise
            await self._refuse(_first(matched), scope, receive, send)


class _Disconnected(Exception):
    """The client went away while sending its body."""


def _first(group: BaseExceptionGroup[Any]) -> ApiError:
    error = group.exceptions[0]
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, ApiError)
    return error


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands out the already-read body once, then waits on the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _ParsedJsonRequest(Request):
    _parsed: Any = None

    async def json(self) -> Any:
        return self._parsed


class JsonRoute(ShortcutRoute):
    """A route whose JSON body is parsed here, once, as strict JSON (exact decimals).

    Parsed before FastAPI looks at it: FastAPI would answer the ValidationFailed that
    parse_json raises as a bare 400. A shortcut (app.core.http.shortcuts) gets the parsed
    body from `request.json()`.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parsed_once(request: Request) -> Response:
            parsed = _ParsedJsonRequest(request.scope, request.receive)
            if request.method in _JSON_METHODS and (body := await parsed.body()):
                parsed._parsed = parse_json(body)
                # Every body of this API is an object. FastAPI would take any other value
                # for a model whose fields are all optional as an empty one: a PATCH whose
                # body was the number 3.5 was a 200 that changed nothing.
                if not isinstance(parsed._parsed, dict):
                    raise ValidationFailed.field(
                        "body", "must be a JSON object", "The request body is invalid."
                    )
            return await handler(parsed)

        return parsed_once


class ClientTooSlow(TimeoutError):
    """The client did not take a response's data in time: the response is ended."""


class SendDeadline:
    """Pure ASGI middleware: a response write the client does not take in time ends it.

    uvicorn's send waits while the client's socket buffer is full; a client that stops
    reading would otherwise hold the response, and with it a pool connection, a COPY
    snapshot or a bulk slot, for as long as it likes. A response holding a bulk slot (the
    scope's BULK_KEY) is held to the rate floor as well (RateFloor): a client that takes
    it, but too slowly, cannot keep the slot either. ClientTooSlow ends the request (the
    streaming code gives its connection back on the way out), and is logged here as one
    line at INFO: any client can cause it at will, so it is no error of the service and
    earns no traceback.
    """

    def __init__(self, app: ASGIApp, *, timeout: float, min_rate: int, grace: float) -> None:
        self.app = app
        self.timeout = timeout
        self.min_rate = min_rate
        self.grace = grace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streaming = False
        floor: RateFloor | None = None

        async def send_in_time(message: Message) -> None:
            nonlocal streaming, floor
            # A response sent whole is written to the socket's buffer at once; only a body
            # in pieces can wait on a client, from its first piece to its end. Timing every
            # message instead cost a tenth of a small request's CPU (a cancel scope each).
            streaming = streaming or message.get("more_body", False)
            if not streaming:
                await send(message)
                return
            if floor is None and scope.get(BULK_KEY):
                floor = RateFloor(min_rate=self.min_rate, grace=self.grace)
            body = message.get("body", b"")
            # The bytes being sent earn their time once taken: a chunk may take that long
            # on top of what is left.
            deadline = self.timeout if floor is None else min(self.timeout, floor.allows(body))
            started = time.monotonic()
            try:
                async with asyncio.timeout(deadline):
                    await send(message)
            except TimeoutError:
                if deadline < self.timeout:
                    raise self._below_floor() from None
                raise ClientTooSlow(f"the client took no data for {self.timeout:g} s") from None
            waited = time.monotonic() - started
            if floor is not None and not floor.moved(waited, len(body)):
                raise self._below_floor()

        try:
            await self.app(scope, receive, send_in_time)
        except BaseException as exc:
            slow = _only(exc, ClientTooSlow)
            if slow is None:
                raise
            logger.info(
                "response ended: %s",
                slow,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "request_id": scope.get(REQUEST_ID_KEY),
                },
            )

    def _below_floor(self) -> ClientTooSlow:
        return ClientTooSlow(f"the client took data slower than {self.min_rate} bytes/s")


def _only(exc: BaseException, kind: type[ClientTooSlow]) -> ClientTooSlow | None:
    """`exc` when it is a `kind`, or the first of a group holding nothing else; else None."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(kind)
        if matched is not None and rest is None:
            return _only(matched.exceptions[0], kind)
    return None

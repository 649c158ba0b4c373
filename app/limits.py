"""Request bodies checked before the app reads them: size, media type, strict JSON."""

import json
import math
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, problem

# Methods whose bodies the API reads; the others pass through untouched and unread.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# POST /products/import takes CSV or NDJSON, its own (larger) limit, and checks its own media
# type; it is streamed to PostgreSQL, so here its bytes are only counted.
IMPORT_PATH = "/products/import"


def _too_large_detail(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


class BodyTooLarge(ApiError):
    """Raised from receive() when a streamed body passes its limit: the app answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", _too_large_detail(limit))


def _too_large(limit: int) -> Any:
    return problem(413, "payload_too_large", _too_large_detail(limit))


def _unsupported(detail: str) -> Any:
    return problem(415, "unsupported_media_type", detail)


def _invalid(field: str, message: str) -> Any:
    return problem(
        422,
        "validation_failed",
        "The request body is invalid.",
        errors=[{"field": field, "message": message}],
    )


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


def _finite_float(text: str) -> float:
    # float() turns 1e999999 into inf and 1e-999999 into 0.0: a price of 1e-999999 would be
    # stored as 0.00, silently rounded. A number a float cannot hold is refused instead.
    value = float(text)
    mantissa = text.lower().partition("e")[0]
    if math.isinf(value) or (value == 0 and mantissa.strip("-+0.") != ""):
        raise ValueError(f"the number {text[:30]} is out of range")
    return value


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


def strict_json_error(body: bytes) -> tuple[str, str] | None:
    """(field, why) when `body` is not strict JSON (RFC 8259, UTF-8, unique keys, storable
    strings), else None."""
    try:
        text = body.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_reject_pairs,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
        _check_strings(value)
    except UnicodeDecodeError:
        return "body", "is not UTF-8"
    except RecursionError:
        return "body", "is nested too deeply"
    except _Unstorable as exc:
        return exc.field, str(exc)
    except ValueError as exc:  # JSONDecodeError, duplicate keys, NaN, ints past 4300 digits
        return "body", f"is not valid JSON: {str(exc)[:200]}"
    return None


class BodyGuard:
    """Pure ASGI middleware: 413, 415 and 422 for hostile bodies, before the app sees them.

    JSON bodies (every POST/PUT/PATCH but the import) must declare a JSON media type, fit in
    json_max_bytes (a Content-Length over it is refused unread; a chunked body is counted as
    it arrives and refused as soon as it passes) and be strict JSON; the checked body is then
    handed to the app. The import's body is streamed through, counted against its own limit.
    """

    def __init__(self, app: ASGIApp, *, json_max_bytes: int, import_max_bytes: int) -> None:
        self.app = app
        self.json_max_bytes = json_max_bytes
        self.import_max_bytes = import_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
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
        is_import = scope["path"].rstrip("/") == IMPORT_PATH
        limit = self.import_max_bytes if is_import else self.json_max_bytes
        if length is not None and length > limit:
            await _too_large(limit)(scope, receive, send)
            return
        if is_import:
            await self._counted(scope, receive, send, limit)
            return
        if (length or chunked) and (content_type is None or not _is_json(content_type)):
            await _unsupported(
                "Send JSON: Content-Type application/json (UTF-8)."
                if content_type is None
                else "This endpoint takes application/json (UTF-8)."
            )(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: nobody to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await _too_large(limit)(scope, receive, send)
                return
        if body and (reason := strict_json_error(bytes(body))):
            await _invalid(*reason)(scope, receive, send)
            return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if response_started:
                raise
            await _too_large(limit)(scope, receive, send)
        except BaseExceptionGroup as group:
            # The app read the body in a task group: the limit is still the answer.
            if response_started or not group.subgroup(BodyTooLarge):
                raise
            await _too_large(limit)(scope, receive, send)


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

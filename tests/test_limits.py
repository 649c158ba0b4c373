"""app/limits.py: hostile bodies get a 4xx problem, never a 500, and write nothing; slow
clients are cut off on the way in (408) and on the way out (the send deadline)."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from httpx import AsyncClient
from psycopg import Connection
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.core.access import CALLER_KEY, Caller
from app.core.errors import from_database
from app.core.http.limits import BodyGuard, SendDeadline
from tests.conftest import ClientFactory
from tests.helpers import JSON, assert_problem, product

MIB = 1 << 20


def body(text: str) -> bytes:
    return text.encode()


# (what it is, raw body, expected status, expected code)
HOSTILE: list[tuple[str, bytes, int, str]] = [
    ("not JSON", b"{sku: 1}", 422, "validation_failed"),
    ("truncated", b'{"sku": "A-1", "name": ', 422, "validation_failed"),
    ("array", b"[1, 2, 3]", 422, "validation_failed"),
    ("string", b'"hello"', 422, "validation_failed"),
    ("null", b"null", 422, "validation_failed"),
    ("deep arrays", b"[" * 100_000, 422, "validation_failed"),
    ("deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 422, "validation_failed"),
    (
        "deep inside a field",
        body('{"sku":"A-1","name":"n","price":1,"description":')
        + b"[" * 20_000
        + b"]" * 20_000
        + b"}",
        422,
        "validation_failed",
    ),
    (
        "NUL escaped in name",
        body('{"sku":"A-1","name":"a\\u0000b","price":1}'),
        422,
        "validation_failed",
    ),
    (
        "NUL escaped in an unknown field",
        body('{"sku":"A-1","name":"n","price":1,"x":"\\u0000"}'),
        422,
        "validation_failed",
    ),
    ("raw NUL byte", b'{"sku":"A-1","name":"a\x00b","price":1}', 422, "validation_failed"),
    (
        "lone surrogate",
        body('{"sku":"A-1","name":"\\ud800","price":1}'),
        422,
        "validation_failed",
    ),
    ("invalid UTF-8", b'{"sku":"A-1","name":"\xff\xfe","price":1}', 422, "validation_failed"),
    ("UTF-16", '{"sku":"A-1","name":"n","price":1}'.encode("utf-16"), 422, "validation_failed"),
    ("BOM", b'\xef\xbb\xbf{"sku":"A-1","name":"n","price":1}', 422, "validation_failed"),
    (
        "duplicate keys",
        body('{"sku":"A-1","name":"n","price":1,"price":2}'),
        422,
        "validation_failed",
    ),
    ("NaN", body('{"sku":"A-1","name":"n","price":NaN}'), 422, "validation_failed"),
    ("Infinity", body('{"sku":"A-1","name":"n","price":-Infinity}'), 422, "validation_failed"),
    ("huge exponent", body('{"sku":"A-1","name":"n","price":1e999999}'), 422, "validation_failed"),
    (
        "tiny exponent",
        body('{"sku":"A-1","name":"n","price":1e-999999}'),
        422,
        "validation_failed",
    ),
    (
        "5000-digit integer",
        body('{"sku":"A-1","name":"n","price":' + "9" * 5000 + "}"),
        422,
        "validation_failed",
    ),
    (
        "4000-digit integer",
        body('{"sku":"A-1","name":"n","price":1,"quantity":' + "9" * 4000 + "}"),
        422,
        "validation_failed",
    ),
    (
        "huge price string",
        body('{"sku":"A-1","name":"n","price":"' + "9" * 500_000 + '"}'),
        422,
        "validation_failed",
    ),
    (
        "price string exponent",
        body('{"sku":"A-1","name":"n","price":"1e999999999"}'),
        422,
        "validation_failed",
    ),
    (
        "overlong name",
        body('{"sku":"A-1","price":1,"name":"' + "n" * 900_000 + '"}'),
        422,
        "validation_failed",
    ),
    (
        "overlong sku",
        body('{"name":"n","price":1,"sku":"' + "s" * 100_000 + '"}'),
        422,
        "validation_failed",
    ),
    (
        "many fields",
        b"{" + b",".join(b'"f%d":1' % i for i in range(50_000)) + b"}",
        422,
        "validation_failed",
    ),
    ("empty object", b"{}", 422, "validation_failed"),
]


@pytest.mark.parametrize(("what", "raw", "status", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_body_is_a_4xx_problem_and_writes_nothing(
    client: AsyncClient, db: Connection[Any], what: str, raw: bytes, status: int, code: str
) -> None:
    response = await client.post("/products", content=raw, headers=JSON)

    assert_problem(response, status, code)
    assert db.execute("SELECT count(*) FROM products").fetchone() == (0,)


async def test_json_body_over_one_mib_is_413(client: AsyncClient, db: Connection[Any]) -> None:
    big = product(description="d" * (MIB + 10))

    response = await client.post("/products", json=big)

    body = assert_problem(response, 413, "payload_too_large")
    assert str(MIB) in body["detail"]
    assert db.execute("SELECT count(*) FROM products").fetchone() == (0,)


async def test_chunked_json_body_over_one_mib_is_413(client: AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"sku":"A-1","name":"n","price":1,"description":"'
        for _ in range(20):
            yield b"d" * 65536
        yield b'"}'

    response = await client.post("/products", content=chunks(), headers=JSON)

    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")


async def test_body_just_under_the_limit_is_read(client: AsyncClient) -> None:
    padded = b'{"sku":"A-1","name":"n","price":1}' + b" " * (MIB - 40)

    response = await client.post("/products", content=padded, headers=JSON)

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/csv",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=latin-1",
        "application/jsonx",
        "json",
    ],
)
async def test_wrong_content_type_is_415(client: AsyncClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}

    response = await client.post("/products", content=b'{"sku":"A-1"}', headers=headers)

    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON; charset=UTF-8",
        'application/json;charset="utf-8"',
        "application/merge-patch+json",
        "application/vnd.inventory+json",
    ],
)
async def test_json_content_types_are_accepted(client: AsyncClient, content_type: str) -> None:
    response = await client.post(
        "/products",
        content=b'{"sku":"A-1","name":"n","price":1}',
        headers={"content-type": content_type},
    )

    assert response.status_code == 201, response.text


async def test_import_path_is_not_refused_for_csv_or_ndjson(client: AsyncClient) -> None:
    # Whatever the import route answers (it checks its own media types), it is not our 415.
    for content_type in ("text/csv", "application/x-ndjson"):
        response = await client.post(
            "/products/import", content=b"sku,name,price\n", headers={"content-type": content_type}
        )
        assert response.status_code != 415


async def test_get_and_delete_bodies_are_not_inspected(client: AsyncClient) -> None:
    response = await client.request(
        "GET", "/products/NOPE-1", content=b"[" * 1000, headers={"content-type": "text/plain"}
    )

    assert_problem(response, 404, "product_not_found")


# The guard on its own, around a tiny app that streams the body like the import will.


async def _count_body(scope: Scope, receive: Receive, send: Send) -> None:
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def _call(
    guard: BodyGuard, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes, int]:
    scope: Scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    pending = list(chunks)
    received = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal received
        chunk = pending.pop(0)
        received += 1
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body, received


def _guard(app: ASGIApp = _count_body, **overrides: Any) -> BodyGuard:
    """A BodyGuard with small limits; `overrides` change what a test is about."""
    settings: dict[str, Any] = {
        "json_max_bytes": 100, "import_max_bytes": 1000, "timeout": 5, "retry_after": 1,
        "unauthenticated_bodies": 4, "min_rate": 1000, "grace": 5, **overrides,
    }  # fmt: skip
    return BodyGuard(app, **settings)


async def test_declared_length_over_the_limit_is_refused_without_reading() -> None:
    guard = _guard()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"101")]

    status, _, received = await _call(guard, "/products", [b"x" * 101], headers)

    assert (status, received) == (413, 0)


async def test_import_gets_its_own_limit_counted_as_it_streams() -> None:
    guard = _guard()
    csv = [(b"content-type", b"text/csv")]

    # Over the JSON limit, under the import limit: streamed through untouched.
    assert (await _call(guard, "/products/import", [b"a" * 400] * 2, csv))[:2] == (201, b"800")
    # Chunked past the import limit: refused at the chunk that crosses it.
    status, body, received = await _call(guard, "/products/import", [b"a" * 400] * 10, csv)
    assert (status, received) == (413, 3)
    assert b"payload_too_large" in body
    # A declared length past it: refused before the first byte is read.
    declared = [*csv, (b"content-length", b"1001")]
    assert (await _call(guard, "/products/import", [b"a"], declared))[::2] == (413, 0)


@pytest.mark.parametrize(
    "price", ["1_000", "\u0661\u0662", "1e2", " 5", "5 ", "+5", ".5", "5.", "0x10", "1,00"]
)
async def test_price_text_must_be_plain_decimal_notation(
    client: AsyncClient, db: Connection[Any], price: str
) -> None:
    # Decimal() took all of these: "1_000" was stored as 1000.00, Arabic-Indic "١٢" as 12.00.
    response = await client.post("/products", json=product(price=price))

    problem = assert_problem(response, 422, "validation_failed")
    assert [e["field"] for e in problem["errors"]] == ["price"]
    assert db.execute("SELECT count(*) FROM products").fetchone() == (0,)


@pytest.mark.parametrize(
    "path",
    [
        "/products/%00",
        "/products/a%00b",
        "/products/%ff%fe",
        "/products/%ED%A0%80",  # an encoded lone surrogate
        "/products/" + "x" * 30_000,
        "/products/%",
    ],
)
async def test_hostile_sku_in_the_path_is_404(client: AsyncClient, path: str) -> None:
    assert_problem(await client.get(path), 404, "product_not_found")


async def test_path_traversal_matches_no_route(client: AsyncClient) -> None:
    assert_problem(await client.get("/products/..%2F..%2Fetc%2Fpasswd"), 404, "not_found")


async def test_string_psycopg_refuses_to_send_is_422_not_500(settings: Settings) -> None:
    # The safety net behind the body guard: psycopg's client-side DataError (no SQLSTATE)
    # for a NUL in a parameter, raised for real, maps to 422.
    assert settings.database_url
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        with pytest.raises(psycopg.DataError) as raised:
            await conn.execute("SELECT %s::text", ["a\x00b"])

    assert raised.value.sqlstate is None
    mapped = from_database(raised.value)
    assert mapped is not None and (mapped.status, mapped.code) == (422, "validation_failed")


async def test_every_body_but_the_imports_is_held_to_the_json_limit(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    # A large body to another method on the import's path (or any path) is not an import:
    # it is refused by its declared length, before anything reads or parses it (without a
    # token it is refused before that: 401, unread; tests/test_access.py).
    big = b"[" * (2 << 20)
    token = {"Authorization": "Bearer t0ken-A"}
    async with make_client(api_tokens=SecretStr("t0ken-A")) as client:
        for method, path in [
            ("PATCH", "/products/import"),
            ("PUT", "/products/import"),
            ("POST", "/products/import/"),
            ("DELETE", "/products/ABC-1"),
            ("GET", "/products"),
        ]:
            response = await client.request(method, path, content=big, headers={**JSON, **token})
            assert_problem(response, 413, "payload_too_large")
        # The import itself is not bound by the JSON limit (401: no token; nothing read).
        response = await client.post(
            "/products/import", content=big, headers={"content-type": "text/csv"}
        )
        assert_problem(response, 401, "unauthorized")


def _stalling(chunks: list[bytes], stall: float) -> Receive:
    """A receive() that hands out `chunks`, then stalls as a slow client would."""
    pending = list(chunks)

    async def receive() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": True}
        await asyncio.sleep(stall)
        return {"type": "http.request", "body": b"}", "more_body": False}

    return receive


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/products", b"application/json"), ("/products/import", b"text/csv")],
)
async def test_a_body_that_stops_arriving_is_cut_off_with_408(
    path: str, content_type: bytes
) -> None:
    guard = _guard(timeout=0.2)
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", content_type), (b"transfer-encoding", b"chunked")],
    }
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    started = time.monotonic()
    await guard(scope, _stalling([b'{"sku":'], stall=30), send)

    assert time.monotonic() - started < 5
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b"request_timeout" in b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_response_outlasting_the_body_deadline_is_not_cut_off(method: str) -> None:
    # A streamed response (an export) watches receive() for the client going away long
    # after the body is complete: that wait is no body arriving late.
    async def streams_while_watching(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.body", "body": b"done"})

    messages: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.5)  # the client leaves after the deadline has passed
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    guard = _guard(streams_while_watching, timeout=0.2)
    path = "/products/import" if method == "POST" else "/products"
    headers = [(b"content-type", b"text/csv")] if method == "POST" else []
    await guard({"type": "http", "method": method, "path": path, "headers": headers}, receive, send)

    assert sent[0]["status"] == 200
    assert sent[-1]["body"] == b"done"


async def test_a_response_the_client_does_not_take_is_ended_by_the_send_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})

    async def blocked_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            await asyncio.sleep(3600)  # a client whose socket buffer is full

    guard = SendDeadline(endless, timeout=0.2, min_rate=1000, grace=5)
    started = time.monotonic()
    scope = {"type": "http", "method": "GET", "path": "/products", "headers": []}
    with caplog.at_level(logging.INFO, logger="app.limits"):
        await guard(scope, _stalling([], 0), blocked_send)

    assert time.monotonic() - started < 5
    # Ended quietly: one line at INFO (any client can do this at will), no traceback.
    [line] = [r for r in caplog.records if r.name == "app.limits"]
    assert line.levelname == "INFO" and line.exc_info is None
    assert "took no data for 0.2 s" in line.getMessage()


async def test_bodies_without_a_checked_token_are_read_a_few_at_a_time() -> None:
    guard = _guard(timeout=30, unauthenticated_bodies=1, unauthenticated_wait=1)
    headers = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    trickling = asyncio.Event()

    async def trickle() -> Message:
        trickling.set()
        await asyncio.sleep(3600)  # a body that does not come: it holds the only slot
        raise AssertionError("unreachable")

    def scope(**extra: Any) -> Scope:
        return {"type": "http", "method": "POST", "path": "/products", "headers": headers, **extra}

    async def one(extra: dict[str, Any]) -> int:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        await guard(scope(**extra), _stalling([b"{}"], 0), send)
        return int(sent[0]["status"])

    async with asyncio.TaskGroup() as tasks:
        holder = tasks.create_task(
            guard(scope(), lambda: trickle(), lambda message: asyncio.sleep(0))
        )
        await trickling.wait()
        started = time.monotonic()
        refused = await one({})
        waited = time.monotonic() - started
        # A request whose token was checked (app.access.TokenCheck) is not held back.
        checked = await one({CALLER_KEY: Caller("c", writer=True)})
        holder.cancel()

    assert refused == 503 and 0.5 < waited < 5
    assert checked == 201


@pytest.mark.parametrize("body", [b"3.5", b"3.5531951692286727e-165", b'"name"', b"true"])
async def test_a_body_that_is_not_an_object_is_422_even_for_an_all_optional_patch(
    client: AsyncClient, body: bytes
) -> None:
    # Found by schemathesis: FastAPI took a number for a model whose fields are all
    # optional as an empty patch (200, nothing changed; 412 under an If-Match).
    assert (await client.post("/products", json=product())).status_code == 201

    response = await client.patch("/products/ABC-1", content=body, headers=JSON)
    conditional = await client.patch(
        "/products/ABC-1", content=body, headers={**JSON, "If-Match": "null"}
    )

    for answer in (response, conditional):
        problem = assert_problem(answer, 422, "validation_failed")
        assert problem["errors"] == [{"field": "body", "message": "must be a JSON object"}]


async def test_a_body_waiting_for_a_slot_waits_as_long_as_the_body_deadline() -> None:
    # CI: 60 concurrent adjustments to an open API on a busy event loop waited over a
    # second for one of the 16 slots, and a fixed one-second wait answered them 503.
    guard = _guard(unauthenticated_bodies=1)
    headers = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    scope = {"type": "http", "method": "POST", "path": "/products", "headers": headers}
    statuses: list[int] = []

    async def one(receive: Receive) -> None:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        await guard(dict(scope), receive, send)
        statuses.append(int(sent[0]["status"]))

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(one(_stalling([b"{"], stall=1.5)))  # holds the slot for 1.5 s
        await asyncio.sleep(0.05)
        tasks.create_task(one(_stalling([b"{"], stall=0)))

    assert statuses == [201, 201]

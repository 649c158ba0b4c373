"""app/core/http/shortcuts.py: a hot route answers every request exactly as FastAPI would.

Each request is sent twice to the same app: with the route's shortcut, and with it taken
off (FastAPI solves the request). Both answers must be the same, byte for byte but for what
differs between two writes (a new product's id and times), and the shortcut must have been
taken exactly for the requests of the route's common shape.
"""

import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
from httpx import AsyncClient, Response

from app.core.http import shortcuts
from app.listing.router import list_products
from app.products.router import create_product, get_product
from tests.conftest import LOCKED, READ, WRITE_1, ClientFactory
from tests.helpers import bearer, product

# What two writes of the same body rightly differ in.
_PER_WRITE = ("id", "created_at", "updated_at")


class Switch:
    """Turns a route's shortcut off and on, and counts the requests it solved."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, endpoint: Callable[..., Any]) -> None:
        self.monkeypatch = monkeypatch
        self.endpoint = endpoint
        self.solve = getattr(endpoint, shortcuts._SHORTCUT)
        self.taken = 0

    def on(self) -> None:
        async def counted(request: Any) -> dict[str, Any] | None:
            arguments = await self.solve(request)
            self.taken += arguments is not None
            return arguments

        self.monkeypatch.setattr(self.endpoint, shortcuts._SHORTCUT, counted, raising=False)

    def off(self) -> None:
        self.monkeypatch.delattr(self.endpoint, shortcuts._SHORTCUT, raising=False)


def _same(left: Response, right: Response) -> None:
    assert left.status_code == right.status_code, (left.text, right.text)
    skip = {"x-request-id", "etag", "content-length"}
    heads = [{k: v for k, v in r.headers.items() if k not in skip} for r in (left, right)]
    assert heads[0] == heads[1]
    assert ("etag" in left.headers) == ("etag" in right.headers)
    json_types = ("application/json", "application/problem+json")
    if left.headers.get("content-type") in json_types and left.content:
        bodies = [r.json() for r in (left, right)]
        for body in bodies:
            if isinstance(body, dict) and left.status_code < 300:
                for name in _PER_WRITE:
                    body.pop(name, None)
        assert bodies[0] == bodies[1]
    else:
        assert left.content == right.content


async def _compare(
    switch: Switch, send: Callable[[], Any], *, taken: bool, undo: Callable[[], Any] | None = None
) -> None:
    switch.off()
    without = await send()
    if undo is not None:
        await undo()
    switch.on()
    before = switch.taken
    with_it = await send()
    if undo is not None:
        await undo()
    _same(without, with_it)
    assert switch.taken - before == (1 if taken else 0), (send, with_it.status_code)


@pytest.fixture
async def seeded(client: AsyncClient) -> AsyncIterator[AsyncClient]:
    for i in range(3):
        response = await client.post("/products", json=product(f"SHORT-{i}", quantity=i))
        assert response.status_code == 201
    yield client


async def test_lookups_answer_as_fastapi_does(
    seeded: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = seeded
    switch = Switch(monkeypatch, get_product)
    etag = (await client.get("/products/SHORT-1")).headers["etag"]
    cases: list[tuple[str, dict[str, str], bool]] = [
        ("/products/SHORT-1", {}, True),
        ("/products/short-1", {}, True),
        ("/products/NOPE-9", {}, True),
        ("/products/SHORT-1", {"If-None-Match": etag}, True),
        ("/products/SHORT-1", {"If-None-Match": f'"x", {etag}'}, True),
        ("/products/SHORT-1", {"If-None-Match": "*"}, True),
        ("/products/SHORT-1", {"If-None-Match": '"stale"'}, True),
        ("/products/SHORT-1", {"If-None-Match": f"W/{etag}"}, True),
        ("/products/" + "A" * 300, {}, False),
        ("/products/bad%20sku", {}, False),
        ("/products/SHORT-1?x=1", {}, False),
        ("/products/SHORT-1?", {}, True),
    ]
    for path, headers, taken in cases:
        await _compare(switch, partial(client.get, path, headers=headers), taken=taken)
        await _compare(switch, partial(client.head, path, headers=headers), taken=taken)


async def test_pages_answer_as_fastapi_does(
    seeded: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = seeded
    switch = Switch(monkeypatch, list_products)
    cases: list[tuple[str, dict[str, str], bool]] = [
        ("limit=1", {}, True),
        ("limit=2", {"Accept": "text/csv"}, True),
        ("limit=1000", {"Accept": "application/x-ndjson"}, True),
        ("limit=3", {"Accept": "image/png"}, True),
        ("limit=1001", {}, False),
        ("limit=0", {}, False),
        ("limit=01", {}, False),
        ("limit=+1", {}, False),
        ("limit=1&limit=2", {}, False),
        ("limit=1&limt=2", {}, False),
        ("limit=", {}, False),
        ("limit=1&q=mug", {}, False),
        ("", {}, False),
    ]
    for query, headers, taken in cases:
        await _compare(
            switch, partial(client.get, f"/products?{query}", headers=headers), taken=taken
        )
    # The next page's link comes out the same, cursor included.
    await _compare(switch, lambda: client.get("/products?limit=1"), taken=True)
    assert 'rel="next"' in (await client.get("/products?limit=1")).headers["link"]


def _create_cases() -> list[tuple[bytes, dict[str, str], str, bool]]:
    valid = json.dumps(product("NEW-1", quantity=4, reorder_point=2)).encode()
    return [
        (valid, {}, "", True),
        (json.dumps(product("NEW-1", price=5)).encode(), {}, "", True),
        (json.dumps(product("NEW-1", price="1e400")).encode(), {}, "", False),
        (json.dumps(product("NEW-1", quantity=-1)).encode(), {}, "", False),
        (json.dumps(product("NEW-1", extra=1)).encode(), {}, "", False),
        (json.dumps({"sku": "NEW-1"}).encode(), {}, "", False),
        (json.dumps(product("SHORT-0")).encode(), {}, "", True),  # 409: its SKU exists
        (json.dumps(product("short-0")).encode(), {}, "", True),
        (b"[1]", {}, "", False),
        (b"", {}, "", False),
        (b"{", {}, "", False),
        (valid, {"Idempotency-Key": "k-1"}, "", False),
        (valid, {}, "?x=1", False),
    ]


async def test_creates_answer_as_fastapi_does(
    seeded: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = seeded
    switch = Switch(monkeypatch, create_product)

    async def undo() -> None:
        await client.delete("/products/NEW-1")
        await client.delete("/products/new-1")

    for body, headers, query, taken in _create_cases():
        await _compare(
            switch, _poster(client, "/products" + query, body, headers), taken=taken, undo=undo
        )


def _poster(
    client: AsyncClient, path: str, body: bytes, headers: dict[str, str]
) -> Callable[[], Any]:
    # A replay would differ from a first answer: each send gets a fresh Idempotency-Key.
    keys = iter(["k-1", "k-2"])

    async def send() -> Response:
        sent = {"Content-Type": "application/json", **headers}
        if "Idempotency-Key" in sent:
            sent["Idempotency-Key"] = next(keys)
        return await client.post(path, content=body, headers=sent)

    return send


async def test_with_tokens_the_shortcuts_check_them_as_the_routes_do(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_client(**LOCKED) as client:
        assert (
            await client.post("/products", json=product("T-1"), headers=bearer(WRITE_1))
        ).status_code == 201
        for endpoint, method, path, body in [
            (get_product, "GET", "/products/T-1", None),
            (list_products, "GET", "/products?limit=5", None),
            (create_product, "POST", "/products", product("T-2")),
        ]:
            switch = Switch(monkeypatch, endpoint)
            for headers in ({}, bearer("wrong"), bearer(READ), bearer(WRITE_1)):
                taken = headers == bearer(WRITE_1) or (method == "GET" and headers == bearer(READ))
                await _compare(
                    switch,
                    partial(client.request, method, path, json=body, headers=headers),
                    taken=taken,
                    undo=partial(client.delete, "/products/T-2", headers=bearer(WRITE_1)),
                )

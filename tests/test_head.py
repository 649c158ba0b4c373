"""app/head.py: HEAD is answered wherever GET is, with GET's status and headers, no body."""

from typing import Any

import pytest
from httpx import AsyncClient
from psycopg import Connection

from tests.helpers import product


async def test_head_of_a_product_has_the_headers_of_get_and_no_body(client: AsyncClient) -> None:
    assert (await client.post("/products", json=product())).status_code == 201
    got = await client.get("/products/abc-1")

    head = await client.head("/products/abc-1")

    assert head.status_code == 200
    assert head.content == b""
    for name in ("etag", "content-type", "content-length"):
        assert head.headers[name] == got.headers[name], name


@pytest.mark.parametrize(
    "path",
    [
        "/products",
        "/products?limit=1",
        "/products/ABC-1/movements",
        "/healthz",
        "/readyz",
        "/metrics",
    ],
)
async def test_head_works_wherever_get_does(client: AsyncClient, path: str) -> None:
    assert (await client.post("/products", json=product())).status_code == 201

    head = await client.head(path)

    assert head.status_code == (await client.get(path)).status_code == 200
    assert head.content == b""


async def test_head_of_a_missing_product_is_404_without_a_body(client: AsyncClient) -> None:
    head = await client.head("/products/NOPE-1")

    assert head.status_code == 404
    assert head.headers["content-type"] == "application/problem+json"
    assert head.content == b""


async def test_head_of_an_export_stops_the_export_and_frees_its_connection(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'H-' || i, repeat('n', 200), 1 FROM generate_series(1, 50000) i"
    )
    for _ in range(5):  # more than the bulk slots: each HEAD gives its slot back
        head = await client.head("/products", headers={"accept": "text/csv"})
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-type"].startswith("text/csv")
    assert (await client.get("/products/h-1")).status_code == 200


async def test_head_where_get_is_not_allowed_is_405(client: AsyncClient) -> None:
    assert (await client.head("/products/ABC-1/adjustments")).status_code == 405

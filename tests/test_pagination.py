"""limit/after keyset pages and sku_prefix search, in every format."""

import asyncio
import csv
import io
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from httpx import AsyncClient, Response
from psycopg import ClientCursor, Connection

from app.listing.queries import Listing, prefix_range
from tests.helpers import assert_problem, product

_NEXT = re.compile(r'^<(/products\?[^>]+)>; rel="next"$')


def next_url(response: Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    found = _NEXT.match(link)
    assert found, link
    return found.group(1)


async def walk(client: AsyncClient, url: str, **headers: str) -> list[Response]:
    pages = []
    next_page: str | None = url
    while next_page is not None:
        response = await client.get(next_page, headers=headers)
        assert response.status_code == 200, response.text
        pages.append(response)
        next_page = next_url(response)
        assert len(pages) < 10_000
    return pages


async def test_pages_cover_the_list_exactly_once_in_order(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'P-' || i, 'n', 1 FROM generate_series(1, 95) i"
    )
    everything = (await client.get("/products")).json()

    pages = await walk(client, "/products?limit=10")

    assert [len(p.json()) for p in pages] == [10] * 9 + [5]
    assert [row for p in pages for row in p.json()] == everything


async def test_exactly_full_last_page_has_no_next_link(client: AsyncClient) -> None:
    for i in range(4):
        await client.post("/products", json=product(f"E-{i}"))
    pages = await walk(client, "/products?limit=2")
    assert [len(p.json()) for p in pages] == [2, 2]
    assert next_url(pages[-1]) is None


async def test_ties_and_microseconds_round_trip_through_the_cursor(
    client: AsyncClient, db: Connection[Any]
) -> None:
    # One INSERT: rows share now() exactly, so only the id separates them; the others
    # are a microsecond apart, which a cursor rounded to milliseconds would skip or repeat.
    db.execute(
        "INSERT INTO products (sku, name, price, created_at) "
        "SELECT 'T-' || i, 'n', 1, '2026-01-01 00:00:00.000001+00'::timestamptz "
        "  + (i / 3) * interval '1 microsecond' FROM generate_series(1, 12) i"
    )
    pages = await walk(client, "/products?limit=1")
    skus = [p.json()[0]["sku"] for p in pages]
    assert skus == [f"T-{i}" for i in range(1, 13)]


async def test_a_walk_sees_every_existing_row_once_while_rows_are_inserted(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'OLD-' || i, 'n', 1 FROM generate_series(1, 300) i"
    )

    async def insert_meanwhile() -> None:
        for i in range(150):
            assert (await client.post("/products", json=product(f"NEW-{i}"))).status_code == 201

    inserting = asyncio.create_task(insert_meanwhile())
    pages = await walk(client, "/products?limit=7")
    await inserting

    seen = [row["sku"] for p in pages for row in p.json()]
    assert len(seen) == len(set(seen)), "a row was returned twice"
    assert {s for s in seen if s.startswith("OLD-")} == {f"OLD-{i}" for i in range(1, 301)}
    rows = [row for p in pages for row in p.json()]
    keys = [(r["created_at"], r["id"]) for r in rows]
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("accept", "parse"),
    [
        ("text/csv", lambda text: [r[1] for r in list(csv.reader(io.StringIO(text)))[1:]]),
        ("application/x-ndjson", lambda text: re.findall(r'"sku":"([^"]+)"', text)),
    ],
)
async def test_pages_in_csv_and_ndjson(
    client: AsyncClient, db: Connection[Any], accept: str, parse: Any
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'F-' || i, 'n, \"q\"', 1 FROM generate_series(1, 5) i"
    )
    pages = await walk(client, "/products?limit=2", accept=accept)
    assert [p.headers["content-type"].split(";")[0] for p in pages] == [accept] * 3
    assert [s for p in pages for s in parse(p.text)] == [f"F-{i}" for i in range(1, 6)]
    if accept == "text/csv":
        assert all(p.text.startswith("id,sku,name,") for p in pages)


async def test_sku_prefix_ignores_case_and_takes_underscore_literally(
    client: AsyncClient,
) -> None:
    for sku in ["AB_1", "ab_2", "ABX3", "aB-4", "A", "B_1", "AB_"]:
        assert (await client.post("/products", json=product(sku))).status_code == 201

    async def skus(prefix: str, **params: Any) -> list[str]:
        response = await client.get("/products", params={"sku_prefix": prefix, **params})
        assert response.status_code == 200
        return [p["sku"] for p in response.json()]

    assert await skus("ab_") == ["AB_1", "ab_2", "AB_"]
    assert await skus("Ab") == ["AB_1", "ab_2", "ABX3", "aB-4", "AB_"]
    assert await skus("a") == ["AB_1", "ab_2", "ABX3", "aB-4", "A", "AB_"]
    assert await skus("AB_1") == ["AB_1"]
    assert await skus("z") == []
    assert await skus("ab", limit=2) == ["AB_1", "ab_2"]
    pages = await walk(client, "/products?sku_prefix=ab&limit=3")
    assert [p["sku"] for r in pages for p in r.json()] == ["AB_1", "ab_2", "ABX3", "aB-4", "AB_"]
    csv_text = (
        await client.get("/products", params={"sku_prefix": "b"}, headers={"accept": "text/csv"})
    ).text
    assert csv_text.splitlines()[1].split(",")[1] == "B_1"


@pytest.mark.parametrize("prefix", ["a%", "a b", "é", "", "x" * 65, "a\\"])
async def test_prefix_with_characters_no_sku_has_is_422(client: AsyncClient, prefix: str) -> None:
    response = await client.get("/products", params={"sku_prefix": prefix})
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["field"] == "sku_prefix"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "x"},
        {"after": "not-a-cursor"},
        {"after": "WyJ4IiwxXQ"},  # ["x",1]: the right shape, not a timestamp
        {"after": "WzEsMl0"},  # [1,2]
    ],
)
async def test_bad_limit_or_cursor_is_422(client: AsyncClient, params: dict[str, str]) -> None:
    response = await client.get("/products", params=params)
    assert_problem(response, 422, "validation_failed")


def _plan(db: Connection[Any], listing: Listing) -> str:
    """EXPLAIN of a page sent as the service sends a prefix page: bound server-side,
    unprepared (app.queries.listing.page), so the planner sees the values."""
    statement = listing.page()
    rows = db.execute(f"EXPLAIN {statement.sql}", listing.params(), prepare=False).fetchall()
    return "\n".join(row[0] for row in rows)


def _generic_plan(db: Connection[Any], listing: Listing) -> str:
    """EXPLAIN of a page prepared and forced to its generic plan (the prefix unknown)."""
    sql, params = listing.page().sql, listing.params()
    names: list[str] = []

    def placeholder(found: re.Match[str]) -> str:
        if found.group(1) not in names:
            names.append(found.group(1))
        return f"${names.index(found.group(1)) + 1}"

    db.execute("SET plan_cache_mode = force_generic_plan")
    numbered = re.sub(r"%\((\w+)\)s", placeholder, sql)
    db.execute(f"PREPARE listing AS {numbered}")
    try:
        args = ", ".join(ClientCursor(db).mogrify("%s", (params[n],)) for n in names)
        plan = db.execute(f"EXPLAIN EXECUTE listing({args})").fetchall()
    finally:
        db.execute("DEALLOCATE listing")
        db.execute("RESET plan_cache_mode")
    return "\n".join(row[0] for row in plan)


@pytest.mark.slow
async def test_prefix_search_uses_the_sku_index_on_100k_rows(db: Connection[Any]) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'SKU-' || i, 'n', 1 FROM generate_series(1, 100000) i"
    )
    db.execute("ANALYZE products")
    rare = prefix_range("sku-1234")  # 11 of 100k rows

    page = _plan(db, Listing(prefix=rare, limit=50))
    deep = Listing(prefix=rare, after=(datetime(2026, 1, 1, tzinfo=UTC), 5), limit=50)
    deep_page = _plan(db, deep)
    # An export: COPY binds client-side, so the planner sees the literal bounds.
    everything = Listing(prefix=rare)
    copy = ClientCursor(db).mogrify(everything.export(csv=True), everything.params())
    select = re.sub(r"^COPY \((.*)\) TO STDOUT.*$", r"\1", copy, flags=re.S)
    export = "\n".join(r[0] for r in db.execute(f"EXPLAIN {select}").fetchall())

    for plan in (page, deep_page, export):
        assert "Seq Scan" not in plan, plan
        assert "products_sku_lower_key" in plan, plan
    # A prefix matching everything walks the list order's index instead: still no Seq Scan.
    broad = _plan(db, Listing(prefix=prefix_range("s"), limit=50))
    assert "Seq Scan" not in broad and "products_created_at_id_idx" in broad, broad
    # Why prefix pages are never prepared: the generic plan cannot use the SKU index well.
    generic = _generic_plan(db, Listing(prefix=rare, limit=50))
    assert "products_sku_lower_key" not in generic, generic


async def test_a_misspelt_parameter_is_422_not_a_full_export(client: AsyncClient) -> None:
    response = await client.get("/products", params={"limt": "10"})
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"] == [{"field": "limt", "message": "is not a known parameter"}]

"""GET /products as an export: formats, streaming, disconnects and the pool's share."""

import asyncio
import csv
import io
import json
import logging
import time
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from psycopg import Connection

from app.config import Settings
from app.core.http.formats import Format
from app.core.http.streaming import CHUNK_BYTES
from app.listing.rendering import render_page
from tests.conftest import ClientFactory
from tests.helpers import assert_problem, product
from tests.live_inprocess import live_server, rss_bytes

# Every character that breaks naive CSV, JSON or COPY handling.
TRICKY = [
    ("Q-1", 'say "hi", then\nleave', "back\\slash \\n not a newline, tab\there"),
    ("Q-2", "comma, semi; pipe|", None),
    ("Q-3", "unicode: žluťoučký kůň 🐴 — ∑", ""),
    ("Q-4", "carriage\r\nreturn", '"quoted"'),
    ("q_5", "\\.", "\\."),
]


async def _create_tricky(client: AsyncClient) -> list[dict[str, Any]]:
    created = []
    for i, (sku, name, description) in enumerate(TRICKY):
        # Every other product has a reorder point: CSV shows null as an empty field.
        point = {"reorder_point": i} if i % 2 else {}
        response = await client.post(
            "/products",
            json=product(sku, name=name, description=description, quantity=7, **point),
        )
        assert response.status_code == 201, response.text
        created.append(response.json())
    return created


def parse_csv(text: str) -> list[dict[str, Any]]:
    """CSV rows back to API values: empty unquoted is null, numbers as JSON has them."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, records = rows[0], rows[1:]
    assert header == [
        "id",
        "sku",
        "name",
        "description",
        "price",
        "quantity",
        "reserved",
        "available",
        "reorder_point",
        "created_at",
        "updated_at",
    ]
    parsed = []
    for record in records:
        row: dict[str, Any] = dict(zip(header, record, strict=True))
        for name in ("id", "quantity", "reserved", "available"):
            row[name] = int(row[name])
        row["reorder_point"] = int(row["reorder_point"]) if row["reorder_point"] else None
        parsed.append(row)
    return parsed


def null_descriptions_from_raw_csv(text: str) -> list[bool]:
    """Per record: is the description field empty and unquoted (null), not `""`?"""
    return [line.split(",")[3] == "" for line in text.split("\r\n")[1:-1] if line[:1].isdigit()]


async def test_csv_and_ndjson_hold_exactly_what_json_holds(client: AsyncClient) -> None:
    created = await _create_tricky(client)

    as_json = await client.get("/products")
    as_csv = await client.get("/products", headers={"accept": "text/csv"})
    as_ndjson = await client.get("/products", headers={"accept": "application/x-ndjson"})

    assert as_json.headers["content-type"] == "application/json"
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert as_ndjson.headers["content-type"] == "application/x-ndjson"
    assert as_json.json() == created
    assert [json.loads(line) for line in as_ndjson.text.splitlines()] == created
    assert as_ndjson.text.endswith("\n")
    # CSV has no null: an empty unquoted field is null, `""` the empty string.
    expected = [{**p, "description": p["description"] or ""} for p in created]
    assert parse_csv(as_csv.text) == expected
    assert as_csv.text.endswith("\r\n")
    assert '""quoted""' in as_csv.text and ',"",' in as_csv.text
    assert ',Q-2,"comma, semi; pipe|",,19.99,' in as_csv.text


async def test_empty_table_in_every_format(client: AsyncClient) -> None:
    assert (await client.get("/products")).text == "[]"
    assert (await client.get("/products", headers={"accept": "application/x-ndjson"})).text == ""
    csv_text = (await client.get("/products", headers={"accept": "text/csv"})).text
    assert csv_text == (
        "id,sku,name,description,price,quantity,reserved,available,reorder_point,created_at,"
        "updated_at\r\n"
    )


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("*/*", "application/json"),
        ("application/json", "application/json"),
        ("text/*", "text/csv; charset=utf-8"),
        ("text/csv;q=0.5, application/x-ndjson", "application/x-ndjson"),
        ("application/json;q=0.1, text/csv;q=0.9", "text/csv; charset=utf-8"),
        ("text/html, */*;q=0.1", "application/json"),
    ],
)
async def test_accept_picks_the_format(client: AsyncClient, accept: str, media_type: str) -> None:
    response = await client.get("/products", headers={"accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "application/json;q=0"])
async def test_unacceptable_accept_is_406(client: AsyncClient, accept: str) -> None:
    response = await client.get("/products", headers={"accept": accept})
    assert_problem(response, 406, "not_acceptable")


def _fill(db: Connection[Any], rows: int, description_chars: int = 0) -> None:
    # A bulk load as docs/changelog.md tells psql users to write one: set-wise triggers.
    with db.transaction():
        db.execute("SET LOCAL inventory.change_log = bulk")
        db.execute(
            "INSERT INTO products (sku, name, description, price, quantity) "
            "SELECT 'BULK-' || i, 'Product ' || i, repeat('d', %s), (i %% 1000) + 0.99, i %% 50 "
            "FROM generate_series(1, %s) i",
            (description_chars, rows),
        )


def _copies_running(db: Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE query LIKE 'COPY (SELECT%%' AND state = 'active' AND pid <> pg_backend_pid()"
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_exports_of_many_chunks_are_the_rows_as_a_page_frames_them(
    client: AsyncClient, db: Connection[Any]
) -> None:
    # Several network chunks, some holding a quoted newline in a CSV field (framed row by
    # row) and some without one (framed in one pass): the same bytes either way.
    _fill(db, 1500, description_chars=300)
    await _create_tricky(client)
    db.execute("INSERT INTO products (sku, name, description, price) SELECT 'MORE-' || i, "
               "'More ' || i, repeat('m', 300), 1 FROM generate_series(1, 1500) i")  # fmt: skip
    rows = [
        text
        for (text,) in db.execute(
            "SELECT product_json(p)::text FROM products p ORDER BY created_at, id"
        )
    ]

    as_json = await client.get("/products")
    as_csv = await client.get("/products", headers={"accept": "text/csv"})
    as_ndjson = await client.get("/products", headers={"accept": "application/x-ndjson"})

    assert len(as_json.content) > 4 * CHUNK_BYTES
    assert as_json.content == render_page(Format.JSON, rows)
    assert as_ndjson.content == render_page(Format.NDJSON, rows)
    assert as_csv.content == render_page(Format.CSV, rows)


@pytest.mark.slow
async def test_client_disconnect_stops_the_query_and_the_pool_stays_healthy(
    settings: Settings, db: Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    _fill(db, 200_000, description_chars=200)
    async with live_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        for fmt in ("application/json", "text/csv"):
            async with client.stream("GET", "/products", headers={"accept": fmt}) as response:
                assert response.status_code == 200
                got = 0
                async for chunk in response.aiter_bytes():
                    got += len(chunk)
                    if got > 1_000_000:
                        break
                assert _copies_running(db) == 1
            # The stream was closed early: the server notices and cancels the COPY.
            for _ in range(200):  # bounded: 10 s
                if not _copies_running(db):
                    break
                await asyncio.sleep(0.05)
            assert _copies_running(db) == 0

        # The COPY was cancelled and drained, not cut off: no connection had to be closed.
        assert not [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("psycopg")
        ]

        # Every pooled connection works: more concurrent requests than the pool holds.
        lookups = await asyncio.gather(
            *(client.get("/products/bulk-7") for _ in range(settings.pool_size * 3))
        )
        assert {r.status_code for r in lookups} == {200}
        page = await client.get("/products", params={"limit": 3})
        assert [p["sku"] for p in page.json()] == ["BULK-1", "BULK-2", "BULK-3"]


async def test_exports_cannot_take_the_connections_lookups_need(
    postgresql: Connection[Any], pg_server: Any, db: Connection[Any]
) -> None:
    _fill(db, 100_000, description_chars=500)
    settings = Settings(
        database_url=pg_server.app_dsn(postgresql.info.dbname),
        pool_size=3,
        pool_timeout=1.5,
        bulk_connections=2,
    )
    async with live_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        # Two exports that stall: their clients read one chunk, then stop reading.
        stalled = []
        for _ in range(2):
            ctx = client.stream("GET", "/products")
            response = await ctx.__aenter__()
            assert response.status_code == 200
            body = response.aiter_bytes()
            await anext(body)
            stalled.append((ctx, body))  # referenced: a collected iterator closes the stream
        try:
            assert _copies_running(db) == 2
            started = time.monotonic()
            lookup = await client.get("/products/BULK-1")
            assert lookup.status_code == 200
            assert time.monotonic() - started < 1.0
            created = await client.post("/products", json=product("NEW-1"))
            assert created.status_code == 201
            # A third export waits for a slot, then is told to come back.
            third = await client.get("/products")
            assert_problem(third, 503, "database_unavailable")
            assert third.headers["retry-after"]
        finally:
            for ctx, body in stalled:
                await body.aclose()
                await ctx.__aexit__(None, None, None)


@pytest.mark.slow
async def test_streaming_200k_rows_keeps_memory_flat(
    settings: Settings, db: Connection[Any]
) -> None:
    _fill(db, 200_000, description_chars=500)  # about 130 MB of JSON
    async with live_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        await client.get("/products", params={"limit": 10})  # warm up: pool, imports, caches
        baseline = peak = rss_bytes()
        received = 0
        for fmt in ("application/json", "text/csv"):
            async with client.stream("GET", "/products", headers={"accept": fmt}) as response:
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    peak = max(peak, rss_bytes())
    # Server and client share this process: the whole body held anywhere would be >100 MB.
    assert received > 200_000_000
    assert peak - baseline < 40_000_000, (baseline, peak)


@pytest.mark.slow
async def test_bulk_work_outlasts_the_roles_statement_timeout(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    _fill(db, 200_000, description_chars=100)
    dbname = db.info.dbname
    db.execute(f"ALTER ROLE inventory_app IN DATABASE {dbname} SET statement_timeout = '50ms'")  # type: ignore[arg-type]
    async with make_client() as client:
        exported = await client.get("/products", headers={"accept": "text/csv"})
        assert exported.status_code == 200
        assert exported.text.count("\r\n") == 200_001
        rows = "".join(f"T-{i},n,,1,1\n" for i in range(100_000))
        imported = await client.post(
            "/products/import",
            content="sku,name,description,price,quantity\n" + rows,
            headers={"content-type": "text/csv"},
        )
        assert imported.status_code == 201, imported.text


@pytest.mark.slow
@pytest.mark.alone
async def test_a_client_that_stops_reading_is_cut_off_by_the_send_deadline(
    settings: Settings, db: Connection[Any]
) -> None:
    _fill(db, 200_000, description_chars=200)  # ~50 MB of CSV: far more than socket buffers
    slow = settings.model_copy(update={"send_timeout_seconds": 1.0, "bulk_connections": 1})
    async with live_server(slow) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /products HTTP/1.1\r\nHost: t\r\nAccept: text/csv\r\n\r\n")
        await writer.drain()
        await reader.read(65536)  # the export has begun ...
        assert _copies_running(db) == 1
        started = time.monotonic()  # ... and from now on the client reads nothing
        for _ in range(200):  # the server's state, polled (bounded: 20 s)
            if not _copies_running(db):
                break
            await asyncio.sleep(0.1)
        freed_after = time.monotonic() - started
        # The one bulk slot is free again: another export runs.
        async with httpx.AsyncClient(base_url=url) as client:
            again = await client.get("/products", params={"limit": 1})
            export = await client.get("/products", headers={"accept": "application/x-ndjson"})
        writer.close()

    assert _copies_running(db) == 0
    assert freed_after < 10, freed_after  # the deadline (1 s) plus the COPY's wind-down
    assert again.status_code == 200
    assert export.status_code == 200 and export.text.count("\n") == 200_000


# --- Spreadsheet-safe CSV (issue 19, finding 6) ----------------------------------------------

# Cells a spreadsheet runs as formulas; the README's old sed recipe missed the first two
# (a quoted cell, a tab in front).
FORMULAS = [
    '=HYPERLINK("http://x.example/?a","click")',
    "\t=1+1",
    "\r=1+1",
    "=1+1",
    "+1+1",
    "-1+1",
    "@SUM(A1)",
]


async def test_a_spreadsheet_safe_csv_prefixes_every_cell_a_spreadsheet_would_run(
    client: AsyncClient,
) -> None:
    for i, text in enumerate(FORMULAS):
        created = await client.post(
            "/products", json=product(f"F-{i}", name=text, description=text)
        )
        assert created.status_code == 201, created.text
    plain = await client.post("/products", json=product("F-P", name="Mug = cup", description=None))
    assert plain.status_code == 201
    csv_accept = {"accept": "text/csv"}
    expected = {f"F-{i}": "'" + text for i, text in enumerate(FORMULAS)} | {"F-P": "Mug = cup"}

    for params in ({"spreadsheet_safe": "true"}, {"spreadsheet_safe": "true", "limit": "100"}):
        response = await client.get("/products", params=params, headers=csv_accept)
        assert response.status_code == 200
        rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
        assert {r["sku"]: r["name"] for r in rows} == expected, params
        descriptions = {r["sku"]: r["description"] for r in rows}
        assert descriptions == {**expected, "F-P": ""}, params

    # Without it, and in the other formats, the data exactly as stored.
    for params in ({}, {"limit": "100"}):
        raw = await client.get("/products", params=params, headers=csv_accept)
        rows = list(csv.DictReader(io.StringIO(raw.text, newline="")))
        assert {r["name"] for r in rows} == {*FORMULAS, "Mug = cup"}
    as_json = await client.get("/products", params={"spreadsheet_safe": "true"})
    assert {p["name"] for p in as_json.json()} == {*FORMULAS, "Mug = cup"}


async def test_spreadsheet_safe_takes_only_true(client: AsyncClient) -> None:
    response = await client.get("/products", params={"spreadsheet_safe": "false"})

    problem = assert_problem(response, 422, "validation_failed")
    assert [e["field"] for e in problem["errors"]] == ["spreadsheet_safe"]

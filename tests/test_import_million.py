"""A million products through POST /products/import on a real socket, with the default
settings: a 125 MiB file is taken, memory stays flat, and a stock count of all of them is
timed next to the plain import (run with -s to see the times)."""

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg import Connection

from app.config import Settings
from tests.live_inprocess import live_server, rss_bytes

pytestmark = pytest.mark.slow

ROWS = 1_000_000
# Products whose count differs: a stock count of the whole million goes through update mode,
# but only these change. Counting every one of a million changed quantities in one import is
# superlinear today (50,000 changed rows took 280-360 s on this machine: a known bug in the
# change-log path of a big count, docs/performance.md "Known problems"); this keeps the test
# in CI's time.
COUNTED = 10_000
HEADER = b"sku,name,description,price,quantity,reorder_point\n"
MIB = 1 << 20
CHUNK = MIB


def _row(i: int, quantity: int) -> bytes:
    # About 134 bytes a row: a million rows are 128 MiB.
    return (
        f"SKU-{i:07d},Product {i:07d} in a plain brown box,"
        f"Counted and shelved in aisle {i % 40:02d} with the usual care and close attention, "
        f"{i % 100_000 / 100:.2f},{quantity},{i % 20}\n"
    ).encode()


async def _file(quantity_of: Any, sizes: list[int]) -> AsyncIterator[bytes]:
    """The CSV in chunks of about CHUNK bytes, made as it is sent (never held whole)."""
    chunk = bytearray(HEADER)
    for i in range(ROWS):
        chunk += _row(i, quantity_of(i))
        if len(chunk) >= CHUNK:
            sizes.append(len(chunk))
            yield bytes(chunk)
            chunk.clear()
    sizes.append(len(chunk))
    yield bytes(chunk)


async def _import(
    client: httpx.AsyncClient, quantity_of: Any, on_conflict: str, peaks: list[int]
) -> tuple[dict[str, int], float, int]:
    """POST the file; returns the answer, the seconds it took, and the bytes sent."""
    sizes: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        async for chunk in _file(quantity_of, sizes):
            peaks.append(rss_bytes())
            yield chunk

    started = time.monotonic()
    response = await client.post(
        "/products/import",
        params={"on_conflict": on_conflict},
        content=body(),
        headers={"content-type": "text/csv"},
    )
    elapsed = time.monotonic() - started
    peaks.append(rss_bytes())
    assert response.status_code == 201, response.text
    answer: dict[str, int] = response.json()
    return answer, elapsed, sum(sizes)


async def test_a_million_rows_import_with_flat_memory_and_a_stock_count(
    settings: Settings, db: Connection[Any]
) -> None:
    # The defaults a user gets, body limit included; only the test database is ours.
    defaults = Settings(database_url=settings.database_url)
    async with (
        live_server(defaults) as url,
        httpx.AsyncClient(base_url=url, timeout=900) as client,
    ):
        await client.get("/products", params={"limit": 1})  # warm up: pool, imports
        baseline = rss_bytes()
        peaks: list[int] = []

        plain, plain_s, size = await _import(client, lambda i: i % 50, "error", peaks)
        counted = lambda i: i % 50 + (i < COUNTED)  # noqa: E731
        count, count_s, _ = await _import(client, counted, "update", peaks)
        again, again_s, _ = await _import(client, counted, "update", peaks)

    print(f"\n{ROWS:,} rows, {size / MIB:.1f} MiB")
    print(f"plain import (on_conflict=error):      {plain_s:7.1f} s")
    print(f"stock count, {COUNTED:,} quantities changed: {count_s:7.1f} s")
    print(f"the same count again, nothing changed: {again_s:7.1f} s")
    print(f"RSS: baseline {baseline / MIB:.0f} MiB, peak {max(peaks) / MIB:.0f} MiB")
    assert size > 125 * MIB
    assert plain == {"created": ROWS, "updated": 0, "unchanged": 0}
    assert count == {"created": 0, "updated": COUNTED, "unchanged": ROWS - COUNTED}
    assert again == {"created": 0, "updated": 0, "unchanged": ROWS}
    # Server and client share this process: a body held anywhere would be 125 MiB.
    assert max(peaks) - baseline < 60 * MIB, (baseline, max(peaks))
    # The ledger adds up: one correction of +1 per counted product, its quantity one higher.
    assert db.execute(
        "SELECT count(*), sum(delta), min(delta), max(delta), "
        "bool_and(reason = 'correction' AND note = 'import') FROM stock_movements"
    ).fetchone() == (COUNTED, COUNTED, 1, 1, True)
    assert db.execute(
        "SELECT count(*) FROM products p JOIN stock_movements m ON m.product_id = p.id "
        "WHERE m.quantity_after <> p.quantity OR p.quantity <> (substr(p.sku, 5)::int % 50 + 1)"
    ).fetchone() == (0,)

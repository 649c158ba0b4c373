"""GET /reports/stock and /reports/movements over HTTP: numbers against sums computed here and
against the views read with psql by an analyst."""

import asyncio
import csv
import io
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from httpx import AsyncClient
from psycopg import Connection

from tests.cluster import psql
from tests.helpers import RFC3339_UTC, assert_problem, product
from tests.stock_helpers import adjust, record_movements

MAX_PRICE = Decimal("9999999999.99")
MAX_INT = 2**31 - 1
REASONS = ["received", "sold", "returned", "damaged", "correction"]
T0 = datetime(2026, 11, 1, tzinfo=UTC)  # a Sunday


def _csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- /reports/stock ------------------------------------------------------------------------


async def test_stock_report_of_nothing(client: AsyncClient) -> None:
    response = await client.get("/reports/stock")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == [
        "products", "units", "reserved", "value", "out_of_stock", "low_stock", "as_of",
    ]  # fmt: skip
    assert {k: v for k, v in body.items() if k != "as_of"} == {
        "products": 0, "units": 0, "reserved": 0, "value": "0.00", "out_of_stock": 0,
        "low_stock": 0,
    }  # fmt: skip
    assert RFC3339_UTC.match(body["as_of"])


async def test_stock_report_matches_sums_computed_here(client: AsyncClient) -> None:
    rng = random.Random(5)
    made = []
    for i in range(40):
        body = product(
            f"S-{i}",
            price=f"{rng.randrange(0, 100000)}.{rng.randrange(100):02d}",
            quantity=rng.choice([0, 0, 1, 3, 7, 250]),
            reorder_point=rng.choice([None, 0, 3, 10]),
        )
        assert (await client.post("/products", json=body)).status_code == 201
        made.append(body)
    # Stock moves after creation too: the report reads the current quantities.
    assert (await adjust(client, "S-0", 5)).status_code == 200
    made[0]["quantity"] += 5

    body = (await client.get("/reports/stock")).json()

    assert body["products"] == 40
    assert body["units"] == sum(p["quantity"] for p in made)
    assert body["value"] == str(sum(Decimal(p["price"]) * p["quantity"] for p in made))
    assert body["out_of_stock"] == sum(1 for p in made if p["quantity"] == 0)
    low = [p for p in made if p["reorder_point"] is not None]
    assert body["low_stock"] == sum(1 for p in low if p["quantity"] <= p["reorder_point"])


async def test_stock_value_is_exact_at_the_largest_allowed_values(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price, quantity, reorder_point) "
        "SELECT 'M-' || i, 'n', %s, %s, %s FROM generate_series(1, 5000) i",
        (MAX_PRICE, MAX_INT, MAX_INT),
    )

    body = (await client.get("/reports/stock")).json()

    # 1.07e23: far past what a bigint or a double holds exactly.
    assert body["value"] == str(MAX_PRICE * MAX_INT * 5000) == "107374182349892625817650.00"
    assert body["units"] == MAX_INT * 5000
    assert body["low_stock"] == 5000


async def test_stock_report_in_csv_equals_what_an_analyst_reads_with_psql(
    client: AsyncClient, analyst_dsn: str
) -> None:
    for i, (quantity, point) in enumerate([(0, None), (3, 5), (9, 5), (0, 0)]):
        body = product(f"C-{i}", price="2.50", quantity=quantity, reorder_point=point)
        assert (await client.post("/products", json=body)).status_code == 201

    response = await client.get("/reports/stock", headers={"accept": "text/csv"})
    from_psql = psql(analyst_dsn, "--csv", "-c", "SELECT * FROM stock_summary")

    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.text.endswith("\r\n")
    api, view = _csv(response.text), _csv(from_psql)
    assert api[0] == view[0] == [
        "products", "units", "reserved", "value", "out_of_stock", "low_stock", "as_of",
    ]  # fmt: skip
    assert api[1][:6] == view[1][:6] == ["4", "12", "0", "30.00", "2", "2"]
    assert RFC3339_UTC.match(api[1][6])


async def test_stock_report_refuses_ndjson_and_unknown_parameters(client: AsyncClient) -> None:
    ndjson = await client.get("/reports/stock", headers={"accept": "application/x-ndjson"})
    assert_problem(ndjson, 406, "not_acceptable")
    unknown = await client.get("/reports/stock", params={"format": "csv"})
    assert assert_problem(unknown, 422, "validation_failed")["errors"][0]["field"] == "format"


# --- /reports/movements --------------------------------------------------------------------


async def _ledger(
    client: AsyncClient, db: Connection[Any], movements: list[tuple[datetime, str, int]]
) -> None:
    """Movements made through the API, then moved back in time to the given instants."""
    assert (await client.post("/products", json=product("L-1", quantity=10**6))).status_code == 201
    for _, reason, delta in movements:
        assert (await adjust(client, "L-1", delta, reason)).status_code == 200
    ids = [row[0] for row in db.execute("SELECT id FROM stock_movements ORDER BY id")]
    with db.cursor() as cursor:
        cursor.executemany(
            "UPDATE stock_movements SET created_at = %s WHERE id = %s",
            [(at, id_) for id_, (at, _, _) in zip(ids, movements, strict=True)],
        )


def _expected(
    movements: list[tuple[datetime, str, int]], bucket: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    count: Counter[tuple[date, str]] = Counter()
    units: Counter[tuple[date, str]] = Counter()
    for at, reason, delta in movements:
        if not start <= at < end:
            continue
        day = at.astimezone(UTC).date()
        first = {
            "day": day,
            "week": day - timedelta(days=day.weekday()),
            "month": day.replace(day=1),
        }[bucket]
        count[first, reason] += 1
        units[first, reason] += delta
    return [
        {"bucket": b.isoformat(), "reason": r, "movements": count[b, r], "units": units[b, r]}
        for b, r in sorted(count)
    ]


def _random_movements(n: int) -> list[tuple[datetime, str, int]]:
    rng = random.Random(11)
    return [
        (
            T0 + timedelta(seconds=rng.randrange(70 * 86400), microseconds=rng.randrange(10**6)),
            rng.choice(REASONS),
            rng.choice([-1, 1]) * rng.randrange(1, 50),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("bucket", ["day", "week", "month"])
async def test_movements_report_matches_sums_computed_here(
    client: AsyncClient, db: Connection[Any], bucket: str
) -> None:
    movements = _random_movements(150)
    await _ledger(client, db, movements)
    start, end = T0 + timedelta(days=3, hours=5), T0 + timedelta(days=61, hours=2)

    response = await client.get(
        "/reports/movements", params={"from": _iso(start), "to": _iso(end), "bucket": bucket}
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == _expected(movements, bucket, start, end)


async def test_weeks_start_on_monday_and_months_on_the_first_in_utc(
    client: AsyncClient, db: Connection[Any]
) -> None:
    sunday_night = datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC)
    monday = sunday_night + timedelta(microseconds=1)
    december = datetime(2026, 12, 1, tzinfo=UTC)
    await _ledger(
        client, db, [(sunday_night, "sold", -1), (monday, "sold", -2), (december, "sold", -4)]
    )
    window = {"from": "2026-11-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"}

    async def buckets(bucket: str) -> list[tuple[str, int]]:
        response = await client.get("/reports/movements", params={**window, "bucket": bucket})
        return [(row["bucket"], row["units"]) for row in response.json()]

    assert await buckets("day") == [("2026-11-29", -1), ("2026-11-30", -2), ("2026-12-01", -4)]
    assert await buckets("week") == [("2026-11-23", -1), ("2026-11-30", -6)]
    assert await buckets("month") == [("2026-11-01", -3), ("2026-12-01", -4)]


async def test_from_is_inclusive_and_to_exclusive_to_the_microsecond(
    client: AsyncClient, db: Connection[Any]
) -> None:
    t = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    tick = timedelta(microseconds=1)
    await _ledger(
        client, db, [(t - tick, "sold", -1), (t, "sold", -2), (t + timedelta(hours=1), "sold", -4),
                     (t + timedelta(hours=1) + tick, "sold", -8)],
    )  # fmt: skip

    response = await client.get(
        "/reports/movements",
        params={"from": "2026-11-10T12:00:00Z", "to": "2026-11-10T14:00:00.000001+01:00"},
    )

    assert response.json() == [
        {"bucket": "2026-11-10", "reason": "sold", "movements": 2, "units": -6}
    ]


async def test_by_default_the_last_30_days(client: AsyncClient, db: Connection[Any]) -> None:
    now = datetime.now(UTC)
    await _ledger(
        client,
        db,
        [(now - timedelta(days=31), "received", 1), (now - timedelta(days=29), "received", 2),
         (now - timedelta(minutes=1), "sold", -4)],
    )  # fmt: skip

    body = (await client.get("/reports/movements")).json()

    assert [(row["reason"], row["units"]) for row in body] == [("received", 2), ("sold", -4)]


async def test_a_deleted_products_movements_still_count(client: AsyncClient) -> None:
    # The ledger outlives its product (the change log keeps the delete): units sold before a
    # product was withdrawn are still units sold that week.
    assert (
        await client.post("/products", json=product(sku="GONE-1", quantity=0))
    ).status_code == 201
    assert (await adjust(client, "GONE-1", 5)).status_code == 200
    assert (await adjust(client, "GONE-1", -2, "sold")).status_code == 200
    assert (await client.delete("/products/GONE-1")).status_code == 204

    body = (await client.get("/reports/movements")).json()

    assert sorted((row["reason"], row["units"]) for row in body) == [("received", 5), ("sold", -2)]


async def test_reasons_come_alphabetically_within_a_bucket(
    client: AsyncClient, db: Connection[Any]
) -> None:
    at = datetime(2026, 11, 10, tzinfo=UTC)
    await _ledger(client, db, [(at, r, 1 if r != "sold" else -1) for r in reversed(REASONS)])

    body = (
        await client.get(
            "/reports/movements",
            params={"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
        )
    ).json()

    assert [row["reason"] for row in body] == sorted(REASONS)


async def test_movements_report_in_csv_equals_the_view_read_with_psql(
    client: AsyncClient, db: Connection[Any], analyst_dsn: str
) -> None:
    await _ledger(client, db, _random_movements(60))

    response = await client.get(
        "/reports/movements",
        params={"from": "2026-11-01T00:00:00Z", "to": "2027-01-01T00:00:00Z", "bucket": "week"},
        headers={"accept": "text/csv"},
    )
    from_psql = psql(
        analyst_dsn,
        "--csv",
        "-c",
        "SELECT to_char(date_trunc('week', day), 'YYYY-MM-DD') AS bucket, reason, "
        "sum(movements) AS movements, sum(units) AS units FROM movement_daily "
        "WHERE day >= '2026-11-01' AND day < '2027-01-01' GROUP BY 1, 2 ORDER BY 1, 2",
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert _csv(response.text)[0] == ["bucket", "reason", "movements", "units"]
    assert _csv(response.text) == _csv(from_psql)
    assert len(_csv(response.text)) > 10


async def test_an_empty_window_is_an_empty_report_in_both_formats(client: AsyncClient) -> None:
    window = {"from": "2020-01-01T00:00:00Z", "to": "2020-02-01T00:00:00Z"}

    as_json = await client.get("/reports/movements", params=window)
    as_csv = await client.get("/reports/movements", params=window, headers={"accept": "text/csv"})

    assert as_json.json() == []
    assert as_csv.text == "bucket,reason,movements,units\r\n"


async def test_units_are_exact_past_the_integer_range(
    client: AsyncClient, db: Connection[Any]
) -> None:
    (product_id,) = db.execute(
        "INSERT INTO products (sku, name, price) VALUES ('X-1', 'n', 1) RETURNING id"
    ).fetchone() or (None,)
    day = datetime(2026, 11, 5, tzinfo=UTC)
    record_movements(db, product_id, [(MAX_INT, "received", day), (-MAX_INT, "sold", day)] * 4)

    body = (
        await client.get(
            "/reports/movements",
            params={"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
        )
    ).json()

    assert body == [
        {"bucket": "2026-11-05", "reason": "received", "movements": 4, "units": 4 * MAX_INT},
        {"bucket": "2026-11-05", "reason": "sold", "movements": 4, "units": -4 * MAX_INT},
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-11-01"}, "from"),
        ({"from": "2026-11-01T00:00:00"}, "from"),  # no offset: not RFC 3339
        ({"to": "yesterday"}, "to"),
        ({"to": "2026-02-30T00:00:00Z"}, "to"),
        ({"bucket": "year"}, "bucket"),
        ({"bucket": "Week"}, "bucket"),
        ({"buckt": "week"}, "buckt"),
    ],
)
async def test_bad_report_parameters_are_422(
    client: AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.get("/reports/movements", params=params)
    body = assert_problem(response, 422, "validation_failed")
    assert field in [e["field"] for e in body["errors"]], body


@pytest.mark.parametrize(
    "window",
    [
        {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
        {"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
        {"from": "9999-12-31T23:59:59Z"},
        {"to": "0001-01-02T00:00:00+01:00"},
        # PostgreSQL takes offsets up to 15:59; RFC 3339 up to 23:59 (was a 422)
        {"from": "0571-06-15T14:08:06.5573+19:35", "to": "0633-10-08T01:04:49.527Z"},
        # past either end of Python's calendar, and RFC 3339's year 0000 and leap second
        {"to": "0001-01-01T00:00:00+19:35"},
        {"from": "9999-12-31T23:00:00-05:00"},
        {"from": "0000-02-29T00:00:00Z", "to": "0001-01-01T00:00:00Z"},
        {"from": "2016-12-31T23:59:60Z", "to": "2017-01-01T00:00:00Z"},
    ],
)
async def test_a_window_holding_no_instant_is_an_empty_report(
    client: AsyncClient, window: dict[str, str]
) -> None:
    await client.post("/products", json={"sku": "W-1", "name": "w", "price": 1, "quantity": 3})

    response = await client.get("/reports/movements", params=window)

    assert (response.status_code, response.json()) == (200, [])


async def test_reports_answer_head_like_get(client: AsyncClient) -> None:
    for path in ("/reports/stock", "/reports/movements"):
        response = await client.head(path)
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["content-type"] == "application/json"


# --- What a report costs (issue 19, finding 9) ---------------------------------------------


async def test_the_stock_report_is_computed_once_a_second_for_everyone(
    client: AsyncClient,
) -> None:
    assert (await client.post("/products", json=product("C-1", quantity=4))).status_code == 201
    # A burst: one scan of the table serves them all (one snapshot, so one as_of).
    burst = await asyncio.gather(*(client.get("/reports/stock") for _ in range(20)))
    assert {r.status_code for r in burst} == {200}
    assert len({r.json()["as_of"] for r in burst}) == 1
    assert burst[0].json()["units"] == 4

    # Within the second a change is not in it yet; after it, it is.
    assert (await adjust(client, "C-1", 3)).status_code == 200
    assert (await client.get("/reports/stock")).json()["units"] == 4
    await asyncio.sleep(1.1)
    fresh = (await client.get("/reports/stock")).json()
    assert fresh["units"] == 7 and fresh["as_of"] != burst[0].json()["as_of"]


async def test_a_client_that_leaves_before_the_first_row_cancels_the_report_query(
    make_app: Any, db: Connection[Any], pg_server: Any
) -> None:
    # The report's query waits on a lock a psql session holds, as it would work through a
    # large ledger: no row comes. A client that leaves meanwhile must stop it.
    holder = psycopg.connect(pg_server.admin_dsn(db.info.dbname))
    holder.execute("LOCK TABLE stock_movements IN ACCESS EXCLUSIVE MODE")
    try:
        async with make_app() as app:
            messages = [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await _until_waiting_on_the_lock(db)
                return {"type": "http.disconnect"}

            sent: list[dict[str, Any]] = []

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/reports/movements",
                "raw_path": b"/reports/movements",
                "query_string": b"",
                "root_path": "",
                "server": ("127.0.0.1", 8000),
                "client": ("127.0.0.1", 50000),
                "headers": [],
            }
            # Returns once the client is gone, not when the lock is released.
            await asyncio.wait_for(app(scope, receive, send), 10)
            assert sent == []
            assert _waiting_on_the_lock(db) == 0
    finally:
        holder.close()


def _waiting_on_the_lock(db: Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query LIKE 'COPY%%'"
    ).fetchone()
    assert row is not None
    return int(row[0])


async def _until_waiting_on_the_lock(db: Connection[Any]) -> None:
    for _ in range(100):
        if _waiting_on_the_lock(db):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the report's query never waited on the lock")

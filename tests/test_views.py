"""The report views and the analysts' role, in the database: numbers checked against sums here."""

import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import Connection, errors

from tests.stock_helpers import record_movements

MAX_PRICE = Decimal("9999999999.99")
MAX_INT = 2**31 - 1
REASONS = ["received", "sold", "returned", "damaged", "correction"]


def _summary(db: Connection[Any]) -> dict[str, Any]:
    cursor = db.execute("SELECT * FROM stock_summary")
    row = cursor.fetchone()
    assert row is not None and cursor.fetchone() is None
    return dict(zip([c.name for c in cursor.description or ()], row, strict=True))


def _add_products(db: Connection[Any], rows: list[tuple[Decimal, int, int | None]]) -> None:
    with db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO products (sku, name, price, quantity, reorder_point) "
            "VALUES (%s, 'n', %s, %s, %s)",
            [(f"S-{i}", price, quantity, point) for i, (price, quantity, point) in enumerate(rows)],
        )


# --- stock_summary -------------------------------------------------------------------------


def test_stock_summary_of_no_products_is_zeros(db: Connection[Any]) -> None:
    summary = _summary(db)

    assert {k: v for k, v in summary.items() if k != "as_of"} == {
        "products": 0, "units": 0, "reserved": 0, "value": Decimal("0.00"), "out_of_stock": 0,
        "low_stock": 0,
    }  # fmt: skip
    assert str(summary["value"]) == "0.00"
    assert abs(summary["as_of"] - datetime.now(UTC)) < timedelta(minutes=1)


def test_stock_summary_matches_sums_computed_here(db: Connection[Any]) -> None:
    rng = random.Random(10)
    rows = [
        (
            Decimal(rng.randrange(0, 10**7)) / 100,
            rng.choice([0, rng.randrange(1, 1000)]),
            rng.choice([None, 0, rng.randrange(0, 50)]),
        )
        for _ in range(500)
    ]
    _add_products(db, rows)

    summary = _summary(db)

    assert summary["products"] == 500
    assert summary["units"] == sum(q for _, q, _ in rows)
    assert summary["value"] == sum(p * q for p, q, _ in rows)
    assert summary["out_of_stock"] == sum(1 for _, q, _ in rows if q == 0)
    assert summary["low_stock"] == sum(1 for _, q, r in rows if r is not None and q <= r)
    assert str(summary["value"]).split(".")[1].__len__() == 2


def test_stock_summary_is_exact_at_the_largest_allowed_values(db: Connection[Any]) -> None:
    count = 20_000
    db.execute(
        "INSERT INTO products (sku, name, price, quantity) "
        "SELECT 'S-' || i, 'n', %s, %s FROM generate_series(1, %s) i",
        (MAX_PRICE, MAX_INT, count),
    )

    summary = _summary(db)

    assert summary["units"] == MAX_INT * count
    assert summary["value"] == MAX_PRICE * MAX_INT * count  # 4.3e23: past bigint, not rounded
    assert str(summary["value"]) == "429496729399570503270600.00"


@pytest.mark.parametrize(
    ("quantity", "reorder_point", "low", "out"),
    [
        (0, None, False, True),  # null: never low, even when out of stock
        (5, None, False, False),
        (0, 0, True, True),  # zero: low only when out
        (1, 0, False, False),
        (5, 5, True, False),  # at the point is low
        (6, 5, False, False),
        (MAX_INT, MAX_INT, True, False),
    ],
)
def test_low_and_out_of_stock_counts(
    db: Connection[Any], quantity: int, reorder_point: int | None, low: bool, out: bool
) -> None:
    _add_products(db, [(Decimal(1), quantity, reorder_point)])

    summary = _summary(db)

    assert (summary["low_stock"], summary["out_of_stock"]) == (int(low), int(out))


# --- movement_daily ------------------------------------------------------------------------


def _add_movements(db: Connection[Any], movements: list[tuple[datetime, str, int]]) -> None:
    """Ledger rows placed at the given times (backdated: the superuser may set created_at),
    on a product with stock enough for every one of them."""
    (product_id,) = (
        db.execute(
            "INSERT INTO products (sku, name, price, quantity) "
            "VALUES ('M-1', 'n', 1, 1000000) RETURNING id"
        ).fetchone()
        or ()
    )
    record_movements(db, product_id, [(delta, reason, at) for at, reason, delta in movements])


def _expected(movements: list[tuple[datetime, str, int]]) -> list[tuple[date, str, int, int]]:
    count: Counter[tuple[date, str]] = Counter()
    units: Counter[tuple[date, str]] = Counter()
    for at, reason, delta in movements:
        key = (at.astimezone(UTC).date(), reason)
        count[key] += 1
        units[key] += delta
    return [(day, reason, count[day, reason], units[day, reason]) for day, reason in sorted(count)]


def _random_movements(n: int, start: datetime, days: int) -> list[tuple[datetime, str, int]]:
    rng = random.Random(7)
    return [
        (
            start
            + timedelta(seconds=rng.randrange(days * 86400), microseconds=rng.randrange(10**6)),
            rng.choice(REASONS),
            rng.choice([-1, 1]) * rng.randrange(1, 100),
        )
        for _ in range(n)
    ]


def test_movement_daily_matches_sums_computed_here(db: Connection[Any]) -> None:
    movements = _random_movements(2000, datetime(2026, 10, 1, tzinfo=UTC), 60)
    _add_movements(db, movements)

    rows = db.execute("SELECT * FROM movement_daily ORDER BY day, reason").fetchall()

    assert rows == _expected(movements)


def test_movement_daily_days_are_utc_whatever_the_session_time_zone(db: Connection[Any]) -> None:
    last = datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC)
    _add_movements(db, [(last, "sold", -1), (last + timedelta(microseconds=1), "sold", -2)])
    db.execute("SET TIME ZONE 'Pacific/Kiritimati'")  # UTC+14

    rows = db.execute("SELECT day, reason, movements, units FROM movement_daily ORDER BY day")

    assert rows.fetchall() == [
        (date(2026, 11, 29), "sold", 1, -1),
        (date(2026, 11, 30), "sold", 1, -2),
    ]


def test_movement_daily_over_a_range_takes_from_and_leaves_to(db: Connection[Any]) -> None:
    t0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    tick = timedelta(microseconds=1)
    _add_movements(
        db,
        [(t0 - tick, "sold", -1), (t0, "sold", -2), (t0 + timedelta(days=1) - tick, "sold", -4),
         (t0 + timedelta(days=1), "sold", -8)],
    )  # fmt: skip

    rows = db.execute(
        "SELECT * FROM movement_daily(%s, %s) ORDER BY day", (t0, t0 + timedelta(days=1))
    ).fetchall()

    assert rows == [(date(2026, 11, 10), "sold", 1, -2), (date(2026, 11, 11), "sold", 1, -4)]


def test_movement_units_do_not_overflow(db: Connection[Any]) -> None:
    # Every delta at the largest integer: their sum leaves bigint's range for numeric's.
    (product_id,) = db.execute(
        "INSERT INTO products (sku, name, price) VALUES ('M-1', 'n', 1) RETURNING id"
    ).fetchone() or (None,)
    day = datetime(2026, 11, 29, tzinfo=UTC)
    record_movements(db, product_id, [(MAX_INT, "received", day), (-MAX_INT, "sold", day)] * 3)

    assert db.execute("SELECT reason, units FROM movement_daily ORDER BY 1").fetchall() == [
        ("received", 3 * MAX_INT),
        ("sold", -3 * MAX_INT),
    ]


def test_views_and_their_columns_are_documented(db: Connection[Any]) -> None:
    for view, columns in [("stock_summary", 7), ("movement_daily", 4)]:
        described = db.execute(
            "SELECT objsubid FROM pg_description WHERE objoid = %s::regclass", (view,)
        ).fetchall()
        assert len(described) == 1 + columns, view
    assert db.execute(
        "SELECT obj_description('movement_daily(timestamptz, timestamptz)'::regprocedure)"
    ).fetchone() != (None,)


# --- inventory_reader ----------------------------------------------------------------------


@pytest.fixture
def analyst(analyst_dsn: str) -> Iterator[Connection[Any]]:
    with psycopg.connect(analyst_dsn, autocommit=True) as conn:
        yield conn


def test_reader_reads_products_ledger_and_reports(
    db: Connection[Any], analyst: Connection[Any]
) -> None:
    _add_products(db, [(Decimal("2.50"), 4, 5)])
    _add_movements(db, [(datetime(2026, 11, 29, tzinfo=UTC), "sold", -3)])

    assert analyst.execute("SELECT count(*) FROM products").fetchone() == (2,)
    assert analyst.execute("SELECT count(*) FROM stock_movements").fetchone() == (1,)
    assert analyst.execute("SELECT products, low_stock FROM stock_summary").fetchone() == (2, 1)
    assert analyst.execute("SELECT units FROM movement_daily").fetchone() == (-3,)
    assert analyst.execute(
        "SELECT units FROM movement_daily('2026-11-29Z', '2026-11-30Z')"
    ).fetchone() == (-3,)
    assert analyst.execute(
        "SELECT product_json(p)->>'price' FROM products p WHERE sku = 'S-0'"
    ).fetchone() == ("2.50",)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM idempotency_keys",
        "INSERT INTO products (sku, name, price) VALUES ('X', 'n', 1)",
        "UPDATE products SET name = 'x'",
        "DELETE FROM stock_movements",
        "TRUNCATE products",
        "CREATE TABLE mine (x int)",
        "ALTER VIEW stock_summary RENAME TO s",
    ],
)
def test_reader_cannot_write_or_read_stored_responses(
    analyst: Connection[Any], statement: str
) -> None:
    with pytest.raises(errors.InsufficientPrivilege):
        analyst.execute(statement)  # type: ignore[arg-type]


def test_reader_role_cannot_log_in_itself(db: Connection[Any]) -> None:
    assert db.execute(
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname = 'inventory_reader'"
    ).fetchone() == (False, False, False, False)

"""Plans on big tables: a million products and ten million movements answer from indexes.

Each test prints its execution time (run with -s to see them).
"""

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import Connection

from tests.cluster import Cluster
from tests.conftest import SCHEMA

pytestmark = pytest.mark.slow

PRODUCTS = 1_000_000
MOVEMENTS = 10_000_000
# A sequential scan of a million products takes about a second here; a page from an index a
# few milliseconds. The bound sits far from both, so a busy machine does not make it flaky.
PAGE_BOUND_MS = 250

# Names like "Blue mug 123": common words, and a rare one ("Zebra") in every 100,000th.
# Quantities spread over 0..999; every 100th product has a reorder point of 10.
_PRODUCTS = f"""
INSERT INTO products (sku, name, price, quantity, reorder_point, created_at)
SELECT 'SKU-' || lpad(i::text, 7, '0'),
       CASE WHEN i % 100000 = 0 THEN 'Zebra lamp'
            ELSE (ARRAY['Blue', 'Red', 'Green', 'Black', 'White', 'Small', 'Large'])[i % 7 + 1]
                 || ' ' || (ARRAY['mug', 'plate', 'bowl', 'glass', 'chair', 'table', 'shelf',
                                  'towel', 'spoon', 'knife', 'fork'])[i % 11 + 1]
       END || ' ' || i,
       (i % 10000) / 100.0,
       (i::bigint * 7919) % 1000,
       CASE WHEN i % 100 = 0 THEN 10 END,
       '2020-01-01Z'::timestamptz + i * interval '1 second'
FROM generate_series(1, {PRODUCTS}) i
"""

# A year of movements, 3 s apart, over 1,000 products.
_MOVEMENTS = f"""
INSERT INTO stock_movements (product_id, delta, reason, quantity_after, created_at)
SELECT (SELECT min(id) FROM products) + i % 1000,
       CASE WHEN i % 5 = 0 THEN 7 ELSE -1 END,
       (ARRAY['received', 'sold', 'returned', 'damaged', 'correction'])[i % 5 + 1],
       0,
       '2025-01-01Z'::timestamptz + i * interval '3 seconds'
FROM generate_series(1, {MOVEMENTS}) i
"""

LIST = (
    "SELECT product_json(p)::text FROM products p WHERE {where} "
    "ORDER BY p.created_at, p.id LIMIT 51"
)
SEARCH = (
    "(lower(p.name) LIKE '%%' || lower(%(pattern)s) || '%%' "
    "OR lower(p.sku) LIKE '%%' || lower(%(pattern)s) || '%%')"
)


@pytest.fixture(scope="module")
def big(pg_server: Cluster) -> Iterator[Connection[Any]]:
    """A database of its own with a million products, built once for this module."""
    name = f"plans_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # generated name
    try:
        with psycopg.connect(pg_server.admin_dsn(name), autocommit=True) as db:
            db.execute(SCHEMA.read_text())  # type: ignore[arg-type]  # a file, not user input
            started = time.monotonic()
            db.execute(_PRODUCTS)  # type: ignore[arg-type]
            db.execute("VACUUM ANALYZE products")
            print(f"\n{PRODUCTS:,} products loaded in {time.monotonic() - started:.1f} s")
            yield db
    finally:
        with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ledger(big: Connection[Any]) -> Connection[Any]:
    """Ten million movements in the same database.

    Loaded the quick way a test may take: foreign keys unchecked (session_replication_role)
    and the secondary indexes built after the rows, from their own definitions, so the table
    ends exactly as schema.sql makes it.
    """
    started = time.monotonic()
    indexes = big.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'stock_movements' "
        "AND indexname <> 'stock_movements_pkey'"
    ).fetchall()
    for index, _ in indexes:
        big.execute(f"DROP INDEX {index}")  # type: ignore[arg-type]
    big.execute("SET session_replication_role = replica")
    big.execute(_MOVEMENTS)  # type: ignore[arg-type]
    big.execute("RESET session_replication_role")
    for _, definition in indexes:
        big.execute(definition)
    big.execute("VACUUM ANALYZE stock_movements")
    print(f"\n{MOVEMENTS:,} movements loaded in {time.monotonic() - started:.1f} s")
    return big


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def explain(db: Connection[Any], sql: str, params: dict[str, Any] | None = None) -> Any:
    """The executed plan's nodes and its execution time in ms; prints the time."""
    (document,) = (
        db.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql,  # type: ignore[arg-type]
            params,
        ).fetchone()
        or ()
    )
    nodes = list(_nodes(document[0]["Plan"]))
    ms = document[0]["Execution Time"]
    print(f"\n{ms:8.2f} ms  {sql % {k: repr(v) for k, v in (params or {}).items()}}")
    return nodes, ms


def seq_scans(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"]


def indexes_used(nodes: list[dict[str, Any]]) -> set[str]:
    return {n["Index Name"] for n in nodes if "Index Name" in n}


@pytest.mark.parametrize(
    ("term", "rows"),
    [("zebra", 10), ("ZEBRA LAMP", 10), ("0123456", 1), ("sku-0999999", 1)],
)
def test_a_selective_term_is_found_through_the_trigram_indexes(
    big: Connection[Any], term: str, rows: int
) -> None:
    nodes, ms = explain(big, LIST.format(where=SEARCH), {"pattern": term})

    assert seq_scans(nodes) == []
    assert {"products_name_trgm_idx", "products_sku_trgm_idx"} <= indexes_used(nodes)
    assert nodes[0]["Actual Rows"] == rows
    assert ms < PAGE_BOUND_MS


def test_a_selective_term_on_a_deep_page_is_as_cheap(big: Connection[Any]) -> None:
    where = SEARCH + " AND (p.created_at, p.id) > (%(at)s::timestamptz, %(id)s)"
    (at, id_) = (
        big.execute(
            "SELECT created_at, id FROM products ORDER BY created_at, id OFFSET 900000 LIMIT 1"
        ).fetchone()
        or ()
    )

    nodes, ms = explain(big, LIST.format(where=where), {"pattern": "zebra", "at": at, "id": id_})

    assert seq_scans(nodes) == []
    assert nodes[0]["Actual Rows"] == 1
    assert ms < PAGE_BOUND_MS


def test_low_stock_reads_only_the_partial_index(big: Connection[Any]) -> None:
    nodes, ms = explain(big, LIST.format(where="p.quantity <= p.reorder_point"))

    assert seq_scans(nodes) == []
    assert indexes_used(nodes) == {"products_low_stock_idx"}
    assert nodes[0]["Actual Rows"] == 51
    assert ms < PAGE_BOUND_MS


def test_low_stock_export_reads_only_the_partial_index(big: Connection[Any]) -> None:
    expected = big.execute(
        "SELECT count(*) FROM products WHERE quantity <= coalesce(reorder_point, -1)"
    ).fetchone()

    nodes, ms = explain(
        big,
        "SELECT product_json(p)::text FROM products p WHERE p.quantity <= p.reorder_point "
        "ORDER BY p.created_at, p.id",
    )

    assert seq_scans(nodes) == []
    assert indexes_used(nodes) == {"products_low_stock_idx"}
    assert (nodes[0]["Actual Rows"],) == expected
    assert ms < PAGE_BOUND_MS


@pytest.mark.parametrize("quantity_max", [0, 2])
def test_quantity_max_uses_an_index(big: Connection[Any], quantity_max: int) -> None:
    nodes, ms = explain(big, LIST.format(where="p.quantity <= %(max)s"), {"max": quantity_max})

    assert seq_scans(nodes) == []
    assert nodes[0]["Actual Rows"] == 51
    assert ms < PAGE_BOUND_MS


def test_filters_combined_use_indexes(big: Connection[Any]) -> None:
    where = (
        SEARCH + " AND lower(p.sku) ~>=~ %(low)s AND lower(p.sku) ~<~ %(high)s"
        " AND p.quantity <= p.reorder_point AND p.quantity <= %(max)s"
    )

    nodes, ms = explain(
        big,
        LIST.format(where=where),
        {"pattern": "mug", "low": "sku-05", "high": "sku-06", "max": 100},
    )

    assert seq_scans(nodes) == []
    assert ms < PAGE_BOUND_MS


def test_a_month_of_the_ledger_reads_only_that_month(ledger: Connection[Any]) -> None:
    month = ledger.execute(
        "SELECT count(*) FROM stock_movements "
        "WHERE created_at >= '2025-03-01Z' AND created_at < '2025-04-01Z'"
    ).fetchone()

    nodes, ms = explain(
        ledger,
        "SELECT date_trunc('week', day)::date AS bucket, reason, sum(movements), sum(units) "
        "FROM movement_daily(%(from)s, %(to)s) GROUP BY 1, 2 ORDER BY 1, 2",
        {"from": "2025-03-01T00:00:00Z", "to": "2025-04-01T00:00:00Z"},
    )

    assert seq_scans(nodes) == []
    scanned = [n for n in nodes if n.get("Relation Name") == "stock_movements"]
    assert [(n["Node Type"], n["Index Name"]) for n in scanned] == [
        ("Index Only Scan", "stock_movements_created_at_idx")
    ]
    assert [(n["Actual Rows"],) for n in scanned] == [month]
    assert month[0] < MOVEMENTS / 10  # type: ignore[index]
    # A whole-ledger aggregate takes several seconds here.
    assert ms < 3000

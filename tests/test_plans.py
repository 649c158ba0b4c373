"""Plans on big tables: a million products and ten million movements answer from indexes.

The statements are the service's own (app.queries), run as it runs them: a page bound on
the server and unprepared, an export's COPY bound on the client. Each test prints its
execution time (run with -s to see them).
"""

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from psycopg import ClientCursor, Connection, sql

from app.config import Settings
from app.imports import queries as imports
from app.listing.queries import SCAN_BUDGET, Listing, prefix_range
from app.locations import queries as locations
from app.main import create_app
from app.products.queries import _GET_MANY
from app.reports import queries as reports
from tests.cluster import Cluster
from tests.conftest import SCHEMA

# One worker builds the module's big databases, once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("plans")]

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
            with db.transaction():
                # A bulk load as docs/changelog.md tells psql users to write one.
                db.execute("SET LOCAL inventory.change_log = bulk")
                db.execute(_PRODUCTS)  # type: ignore[arg-type]
            db.execute("VACUUM ANALYZE products, product_stock")
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


def explain(db: Connection[Any], label: str, query: str, params: Any = None) -> Any:
    """The executed plan's nodes and its execution time in ms; prints the time."""
    (document,) = (
        db.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + query,  # type: ignore[arg-type]
            params,
            prepare=False,
        ).fetchone()
        or ()
    )
    ms = document[0]["Execution Time"]
    print(f"\n{ms:9.2f} ms  {label}")
    return list(_nodes(document[0]["Plan"])), ms


def explain_page(db: Connection[Any], label: str, listing: Listing) -> Any:
    """A page's plan, bound and unprepared as app.queries.listing.page sends it."""
    statement = listing.page()
    return explain(db, label, statement.sql, statement.params(**listing.params()))


def explain_copy(db: Connection[Any], label: str, copy: sql.Composed, params: Any) -> Any:
    """The plan of a COPY's query, with the literals psycopg binds into it client-side."""
    bound = ClientCursor(db).mogrify(copy, params)
    query = re.sub(r"^COPY \((.*)\) TO STDOUT.*$", r"\1", bound, flags=re.S)
    return explain(db, label, query)


def seq_scans(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"]


def indexes_used(nodes: list[dict[str, Any]]) -> set[str]:
    return {n["Index Name"] for n in nodes if "Index Name" in n}


def returned(nodes: list[dict[str, Any]]) -> int:
    return int(nodes[0]["Actual Rows"])


@pytest.mark.parametrize(
    ("term", "rows"),
    [("zebra", 10), ("ZEBRA LAMP", 10), ("0123456", 1), ("sku-0999999", 1)],
)
def test_a_selective_term_is_found_through_the_trigram_indexes(
    big: Connection[Any], term: str, rows: int
) -> None:
    nodes, ms = explain_page(big, f"page q={term}", Listing(q=term, limit=50))

    assert seq_scans(nodes) == []
    assert {"products_name_trgm_idx", "products_sku_trgm_idx"} <= indexes_used(nodes)
    assert returned(nodes) == rows
    assert ms < PAGE_BOUND_MS


def test_a_selective_term_on_a_deep_page_is_as_cheap(big: Connection[Any]) -> None:
    (at, id_) = (
        big.execute(
            "SELECT created_at, id FROM products ORDER BY created_at, id OFFSET 900000 LIMIT 1"
        ).fetchone()
        or ()
    )

    nodes, ms = explain_page(
        big, "page q=zebra after 900,000", Listing(q="zebra", after=(at, id_), limit=50)
    )

    assert seq_scans(nodes) == []
    assert returned(nodes) == 1
    assert ms < PAGE_BOUND_MS


def test_a_selective_term_exports_from_the_index(big: Connection[Any]) -> None:
    listing = Listing(q="zebra")

    nodes, ms = explain_copy(big, "export q=zebra", listing.export(csv=True), listing.params())

    assert seq_scans(nodes) == []
    assert returned(nodes) == 10
    assert ms < PAGE_BOUND_MS


def test_a_term_without_trigrams_reads_one_bounded_window_per_page(big: Connection[Any]) -> None:
    nodes, ms = explain_page(big, "page q=zq (no trigram, no match)", Listing(q="zq", limit=50))

    assert seq_scans(nodes) == []
    scanned = [n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in nodes
               if n.get("Relation Name") == "products"]  # fmt: skip
    assert max(scanned) <= SCAN_BUDGET
    assert returned(nodes) == 1  # no product: only the window's end, for the next page
    assert ms < PAGE_BOUND_MS


def test_low_stock_reads_only_the_partial_index(big: Connection[Any]) -> None:
    nodes, ms = explain_page(big, "page low_stock", Listing(low_stock=True, limit=50))

    assert seq_scans(nodes) == []
    assert indexes_used(nodes) == {"products_low_stock_idx"}
    assert returned(nodes) == 51
    assert ms < PAGE_BOUND_MS


def test_low_stock_export_reads_only_the_partial_index(big: Connection[Any]) -> None:
    expected = big.execute(
        "SELECT count(*) FROM products WHERE quantity <= coalesce(reorder_point, -1)"
    ).fetchone()
    listing = Listing(low_stock=True)

    nodes, ms = explain_copy(big, "export low_stock", listing.export(csv=False), listing.params())

    assert seq_scans(nodes) == []
    assert indexes_used(nodes) == {"products_low_stock_idx"}
    assert (returned(nodes),) == expected
    assert ms < PAGE_BOUND_MS


@pytest.mark.parametrize("quantity_max", [0, 2])
def test_quantity_max_uses_an_index(big: Connection[Any], quantity_max: int) -> None:
    nodes, ms = explain_page(
        big, f"page quantity_max={quantity_max}", Listing(quantity_max=quantity_max, limit=50)
    )

    assert seq_scans(nodes) == []
    assert returned(nodes) == 51
    assert ms < PAGE_BOUND_MS


def test_filters_combined_use_indexes(big: Connection[Any]) -> None:
    listing = Listing(
        q="mug", prefix=prefix_range("sku-05"), low_stock=True, quantity_max=100, limit=50
    )

    nodes, ms = explain_page(big, "page q=mug sku_prefix=sku-05 low_stock quantity_max", listing)

    assert seq_scans(nodes) == []
    assert ms < PAGE_BOUND_MS


@pytest.fixture
def counted(pg_server: Cluster) -> Iterator[str]:
    """A database of its own: 130,000 products BENCH-1.., just vacuumed (as after a load)."""
    name = f"counted_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # generated name
    try:
        with psycopg.connect(pg_server.admin_dsn(name), autocommit=True) as db:
            db.execute(SCHEMA.read_text())  # type: ignore[arg-type]  # a file, not user input
            db.execute(
                "BEGIN; SET LOCAL inventory.change_log = bulk;"
                "INSERT INTO products (sku, name, price) "
                "SELECT 'BENCH-' || i, 'Product ' || i, 1 FROM generate_series(1, 130000) i;"
                "COMMIT"
            )
            db.execute("VACUUM ANALYZE products")
        yield pg_server.admin_dsn(name)
    finally:
        with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


async def test_a_stock_count_meets_products_without_the_trigram_index(counted: str) -> None:
    # Right after a VACUUM the planner prices a trigram-index probe for lower(sku) = ... at
    # almost nothing, but SKUs sharing a prefix share their trigrams: each probe read
    # posting lists as long as the table, and a count of 4,000 took a minute.
    rows = 4_000
    count = "sku,quantity\n" + "".join(f"BENCH-{i},{1000 + i}\n" for i in range(1, rows + 1))

    async def body() -> AsyncIterator[bytes]:
        yield count.encode()

    notices: list[str] = []
    async with await psycopg.AsyncConnection.connect(counted) as conn:
        conn.add_notice_handler(lambda notice: notices.append(notice.message_primary or ""))
        for setting in ("log_min_duration = 0", "log_level = notice"):
            await conn.execute(f"SET auto_explain.{setting}")  # type: ignore[arg-type]
        await conn.execute("LOAD 'auto_explain'")
        started = time.perf_counter()
        imported = await imports.import_products(
            conn, body(), media_type=imports.CSV, on_conflict="update"
        )
        seconds = time.perf_counter() - started
        await conn.rollback()

    print(f"\n{seconds * 1000:9.2f} ms  a stock count of {rows:,} of 130,000 products")
    assert imported.updated == rows
    plans = [n for n in notices if "import_rows" in n and "products" in n]
    assert plans
    assert not [plan for plan in plans if "products_sku_trgm_idx" in plan]


@pytest.fixture
async def big_client(big: Connection[Any], pg_server: Cluster) -> AsyncIterator[AsyncClient]:
    """The service on the million products, connected as the service role."""
    settings = Settings(database_url=pg_server.app_dsn(big.info.dbname), pool_size=4)
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        yield client


@pytest.mark.alone  # it measures time: built again for it, on an idle machine
@pytest.mark.parametrize(
    "query",
    [
        "q=zebra&limit=50",
        "q=ZEBRA&limit=50&accept=csv",
        "q=sku-0123&limit=50",
        "q=zq&limit=50",
        "low_stock=true&limit=50",
        "quantity_max=0&limit=50",
        "q=lamp&sku_prefix=sku-09&low_stock=true&limit=50",
    ],
)
async def test_a_page_answers_in_milliseconds_over_http(
    big_client: AsyncClient, query: str
) -> None:
    params = query.replace("&accept=csv", "")
    headers = {"accept": "text/csv"} if "accept=csv" in query else {}
    await big_client.get(f"/products?{params}", headers=headers)  # a warm connection

    started = time.perf_counter()
    response = await big_client.get(f"/products?{params}", headers=headers)
    ms = (time.perf_counter() - started) * 1000

    print(f"\n{ms:9.2f} ms  GET /products?{query}")
    assert response.status_code == 200
    assert ms < PAGE_BOUND_MS


def test_a_month_of_the_ledger_reads_only_that_month(ledger: Connection[Any]) -> None:
    month = ledger.execute(
        "SELECT count(*) FROM stock_movements "
        "WHERE created_at >= '2025-03-01Z' AND created_at < '2025-04-01Z'"
    ).fetchone()
    copy, params = reports.movements_report(
        csv=False,
        from_at=datetime(2025, 3, 1, tzinfo=UTC),
        to_at=datetime(2025, 4, 1, tzinfo=UTC),
        bucket="week",
    )

    nodes, ms = explain_copy(ledger, "movements report, a month by week", copy, params)

    assert seq_scans(nodes) == []
    scanned = [n for n in nodes if n.get("Relation Name") == "stock_movements"]
    assert [(n["Node Type"], n["Index Name"]) for n in scanned] == [
        ("Index Only Scan", "stock_movements_created_at_idx")
    ]
    assert [(n["Actual Rows"],) for n in scanned] == [month]
    assert month[0] < MOVEMENTS / 10  # type: ignore[index]
    # The whole ledger takes about 8 s here.
    assert ms < 3000


# 100,000 of the products with 7 units in each of five more locations (every 10th product).
_LOCATED = """
INSERT INTO locations (code, name) SELECT 'L-' || g, 'Place ' || g FROM generate_series(1, 5) g;
INSERT INTO product_stock (product_id, location_id)
SELECT p.id, l.id FROM products p CROSS JOIN locations l
WHERE p.id % 10 = 0 AND l.code LIKE 'L-%';
SET LOCAL inventory.change_log = bulk;
INSERT INTO stock_movements (product_id, location, delta, reason, quantity_after)
SELECT s.product_id, l.code, 7, 'received', 7
FROM product_stock s JOIN locations l ON l.id = s.location_id WHERE l.code LIKE 'L-%';
ANALYZE products, product_stock;
"""


def test_a_location_s_stock_pages_answer_from_indexes(big: Connection[Any]) -> None:
    # Loaded and measured in one transaction, rolled back: the other tests see none of it.
    with big.transaction(force_rollback=True):
        big.execute(_LOCATED)  # type: ignore[arg-type]
        for code, after in [("MAIN", "sku-0500000"), ("L-3", "sku-0500000"), ("L-3", "")]:
            (location_id,) = big.execute(
                "SELECT id FROM locations WHERE code = %s", (code,)
            ).fetchone() or (None,)
            statement = locations._LOCATION_STOCK_PAGE
            nodes, ms = explain(
                big,
                f"page of {code}'s stock after {after!r}",
                statement.sql,
                statement.params(location_id=location_id, after=after, limit=51),
            )
            assert seq_scans(nodes) == []
            assert not [n for n in nodes if n["Node Type"] == "Sort"]
            assert returned(nodes) == 51
            assert ms < PAGE_BOUND_MS


def test_coalesced_lookups_probe_the_sku_index_once_per_sku(big: Connection[Any]) -> None:
    # The statement runs prepared (psycopg prepares it from its fifth run): its generic
    # plan is the one to check, for a batch of any size.
    skus = [f"sku-{i:07d}" for i in range(1, 1_000_001, 15_873)] + ["NO-SUCH-SKU"]
    query = _GET_MANY.sql.replace("%(skus)s", "$1")
    big.execute("SET plan_cache_mode = force_generic_plan")
    try:
        big.execute(f"PREPARE coalesced(text[]) AS {query}")  # type: ignore[arg-type]
        execute = ClientCursor(big).mogrify("EXECUTE coalesced(%s)", [skus])
        nodes, ms = explain(big, f"{len(skus)} lookups in one statement", execute)
    finally:
        big.execute("DEALLOCATE ALL")
        big.execute("RESET plan_cache_mode")
    assert seq_scans(nodes) == []
    assert "products_sku_lower_key" in indexes_used(nodes)
    assert returned(nodes) == len(skus) - 1
    assert ms < PAGE_BOUND_MS

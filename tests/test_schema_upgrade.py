"""schema.sql over the previous release's schema: every row stays, the result is a fresh install."""

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import Connection

from tests.cluster import REPO, Cluster, psql
from tests.conftest import SCHEMA
from tests.stock_helpers import broken_ledgers

# Schemas live databases may run: the first release, and the rebuilt core (which added
# product_fields, a function returning the type this release reshapes).
PREVIOUS_RELEASES = ["52af07a", "36dbe64"]

TABLES = {"products": "id", "stock_movements": "id", "idempotency_keys": "scope, key"}


def schema_of(release: str) -> str:
    """schema.sql as a release shipped it (the repository's history)."""
    return subprocess.run(
        ["git", "show", f"{release}:schema.sql"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout


def apply(dsn: str, sql: str) -> None:
    """Apply a schema the way a deploy does: psql, stopping at the first error."""
    psql(dsn, "-f", "-", stdin=sql)


@pytest.fixture
def new_database(pg_server: Cluster) -> Iterator[Any]:
    """Makes empty databases in the test cluster (admin URLs) and drops them afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"upgrade_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # generated name
        made.append(name)
        return pg_server.admin_dsn(name)

    yield make
    with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def _rows(db: Connection[Any]) -> dict[str, list[Any]]:
    return {
        table: [
            row
            for (row,) in db.execute(
                f"SELECT to_jsonb(t) FROM {table} t ORDER BY {key}"  # type: ignore[arg-type]
            )
        ]
        for table, key in TABLES.items()
    }


def _structure(db: Connection[Any]) -> list[Any]:
    """What schema.sql defines, without oids or names that differ between databases."""
    queries = [
        "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, "
        "column_default, is_identity FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY 1, 2",
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "ORDER BY 1, 2",
        "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
        "SELECT t.typname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid AND c.relkind = 'c' "
        "JOIN pg_attribute a ON a.attrelid = t.typrelid "
        "WHERE t.typnamespace = 'public'::regnamespace ORDER BY 1, 2",
        "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p "
        "LEFT JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e' "
        "WHERE p.pronamespace = 'public'::regnamespace AND d.objid IS NULL ORDER BY 1",
        "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger "
        "WHERE NOT tgisinternal ORDER BY 1, 2",
        "SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_schema = 'public' ORDER BY 1, 2, 3",
        "SELECT c.relname, d.objsubid, d.description FROM pg_description d "
        "JOIN pg_class c ON c.oid = d.objoid WHERE c.relnamespace = 'public'::regnamespace "
        "ORDER BY 1, 2",
        "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    ]
    return [db.execute(q).fetchall() for q in queries]  # type: ignore[call-overload]


def _write_rows(db: Connection[Any]) -> None:
    """Rows of every kind the previous release stores, edge values included."""
    db.execute(
        "INSERT INTO products (sku, name, description, price, quantity, created_at) VALUES "
        "('ABC-1', 'Blue mug', NULL, 19.99, 5, '2024-02-29T23:59:59.999999Z'), "
        "('x.Y_z-9', 'Ünïcode ☕', repeat('d', 2000), 9999999999.99, 2147483647, DEFAULT), "
        "('Z', 'free', '', 0, 0, DEFAULT)"
    )
    db.execute(
        "INSERT INTO stock_movements (product_id, delta, reason, note, quantity_after) "
        "SELECT id, 5, 'received', 'PO 1', 5 FROM products WHERE sku = 'ABC-1'"
    )
    db.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, headers, body) "
        "VALUES ('POST /products', 'k-1', '\\x00ff', 201, '{\"ETag\": \"x\"}', 'body')"
    )


@pytest.mark.parametrize("release", PREVIOUS_RELEASES)
def test_upgrade_keeps_every_row_and_ends_as_a_fresh_install(
    new_database: Any, release: str
) -> None:
    old_schema = schema_of(release)
    assert "reorder_point" not in old_schema  # really the release before these changes
    upgraded, fresh = new_database(), new_database()
    apply(upgraded, old_schema)
    with psycopg.connect(upgraded, autocommit=True) as db:
        _write_rows(db)
        before = _rows(db)

    apply(upgraded, SCHEMA.read_text())
    apply(upgraded, SCHEMA.read_text())
    apply(fresh, SCHEMA.read_text())

    with psycopg.connect(upgraded, autocommit=True) as db, psycopg.connect(fresh) as clean:
        after = _rows(db)
        assert _structure(db) == _structure(clean)
        (representation,) = (
            db.execute("SELECT product_json(p) FROM products p WHERE sku = 'ABC-1'").fetchone()
            or ()
        )
    added = {"reorder_point", "reserved", "available", "location"}  # columns of later releases
    for table, rows in before.items():
        assert [{k: v for k, v in row.items() if k not in added} for row in after[table]] == (
            rows
        ), table
    assert [row["reorder_point"] for row in after["products"]] == [None, None, None]
    assert representation["reorder_point"] is None
    assert representation["quantity"] == 5
    assert [row["location"] for row in after["stock_movements"]] == ["MAIN"]


# The last release before locations: one quantity per product, the ledger without locations.
BEFORE_LOCATIONS = "f121de7"


def test_upgrade_from_before_locations_puts_every_quantity_and_movement_in_main(
    new_database: Any,
) -> None:
    old_schema = schema_of(BEFORE_LOCATIONS)
    assert "product_stock" not in old_schema  # really the release before locations
    upgraded, fresh = new_database(), new_database()
    apply(upgraded, old_schema)
    with psycopg.connect(upgraded, autocommit=True) as db:
        db.execute(
            "INSERT INTO products (sku, name, price, quantity) "
            "SELECT 'U-' || g, 'n', 1, g % 4 FROM generate_series(1, 20) g"
        )
        db.execute(
            "WITH p AS (UPDATE products SET quantity = quantity + 5 WHERE sku IN ('U-1', 'U-4') "
            "RETURNING id, quantity) "
            "INSERT INTO stock_movements (product_id, delta, reason, quantity_after) "
            "SELECT id, 5, 'received', quantity FROM p"
        )
        before = _rows(db)
        totals = db.execute("SELECT sku, quantity FROM products ORDER BY id").fetchall()

    apply(upgraded, SCHEMA.read_text())
    apply(upgraded, SCHEMA.read_text())
    apply(fresh, SCHEMA.read_text())

    with psycopg.connect(upgraded, autocommit=True) as db, psycopg.connect(fresh) as clean:
        assert _structure(db) == _structure(clean)
        after = _rows(db)
        added = {"reserved", "available", "location"}
        for table, rows in before.items():
            assert [{k: v for k, v in r.items() if k not in added} for r in after[table]] == (
                rows
            ), table
        # Every quantity is the product's stock in MAIN, every movement was made there.
        stock = db.execute(
            "SELECT p.sku, s.quantity FROM product_stock s JOIN products p ON p.id = s.product_id "
            "WHERE s.location_id = 0 ORDER BY p.id"
        ).fetchall()
        assert stock == [(sku, quantity) for sku, quantity in totals if quantity != 0]
        assert {r["location"] for r in after["stock_movements"]} == {"MAIN"}
        assert broken_ledgers(db) == []
        # And the ledger goes on from there.
        db.execute("SELECT adjust_stock('u-1', -2, 'sold')")
        assert db.execute("SELECT quantity FROM products WHERE sku = 'U-1'").fetchone() == (4,)
        assert broken_ledgers(db) == []


# The release whose change log was one table of events numbered by UPDATEs, with a delivery
# queued per (subscription, event).
LOG_OF_ONE_TABLE = "95b2add"
SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="


def test_upgrade_from_the_log_of_one_table_keeps_every_event_and_delivery(
    new_database: Any,
) -> None:
    old_schema = schema_of(LOG_OF_ONE_TABLE)
    assert "sequenced_at" in old_schema  # really that release
    upgraded, fresh = new_database(), new_database()
    apply(upgraded, old_schema)
    with psycopg.connect(upgraded, autocommit=True) as db:
        db.execute(
            "INSERT INTO webhooks (url, events, secret) VALUES ('https://a.example/', '{*}', %s)",
            (SECRET,),
        )
        db.execute(
            "INSERT INTO products (sku, name, price, quantity) "
            "SELECT 'U-' || g, 'n', 1, 5 FROM generate_series(1, 20) g"
        )
        db.execute(
            "WITH p AS (UPDATE products SET quantity = 7 WHERE sku = 'U-1' RETURNING id) "
            "INSERT INTO stock_movements (product_id, delta, reason, quantity_after) "
            "SELECT id, 2, 'received', 7 FROM p"
        )
        db.execute("SELECT product_changes_sequence(10, false)")  # 10 numbered, queued
        db.execute("UPDATE products SET name = 'm' WHERE sku = 'U-2'")
        db.execute("DELETE FROM products WHERE sku = 'U-3'")  # 13 events still unnumbered
        numbered = db.execute(
            "SELECT seq, product_change_json(c)::jsonb FROM product_changes c "
            "WHERE seq IS NOT NULL ORDER BY seq"
        ).fetchall()
        unnumbered = db.execute(
            "SELECT type, sku FROM product_changes WHERE seq IS NULL ORDER BY id"
        ).fetchall()
        queued = db.execute("SELECT seq FROM webhook_deliveries ORDER BY seq").fetchall()

    apply(upgraded, SCHEMA.read_text())
    apply(upgraded, SCHEMA.read_text())
    apply(fresh, SCHEMA.read_text())

    with psycopg.connect(upgraded, autocommit=True) as db, psycopg.connect(fresh) as clean:
        assert _structure(db) == _structure(clean)
        events = db.execute(
            "SELECT seq, event::jsonb, type, product ->> 'sku' FROM product_changes_page(0, 100) "
            "p JOIN LATERAL (SELECT p.event -> 'product' AS product) x ON true"
        ).fetchall()
        retries = db.execute("SELECT seq FROM webhook_retries ORDER BY seq").fetchall()
        (after,) = db.execute("SELECT after FROM webhooks").fetchone() or ()
        # The log goes on where it stopped.
        db.execute("INSERT INTO products (sku, name, price) VALUES ('NEW-1', 'n', 1)")
        db.execute("SELECT product_changes_sequence(10, true)")
        (last,) = db.execute("SELECT max(seq) FROM product_changes").fetchone() or ()

    assert len(numbered) == 10 and len(unnumbered) == 13
    assert [(seq, event) for seq, event, _, _ in events[:10]] == numbered  # the same JSON
    assert [(t, sku) for _, _, t, sku in events[10:]] == unnumbered  # numbered in order
    assert [seq for seq, *_ in events] == list(range(1, 24))
    assert retries == queued and after == 23
    assert last == 24

"""schema.sql in the catalog: named rules, SQLSTATEs for direct writes, idempotence, grants."""

import json
from typing import Any

import psycopg
import pytest
from psycopg import Connection, errors

from app.models import CHECKS, Product
from tests.cluster import Cluster
from tests.conftest import SCHEMA


def _catalog(db: Connection[Any]) -> list[Any]:
    """Everything schema.sql defines, as text, to compare before and after a re-apply."""
    queries = [
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'products'::regclass ORDER BY conname",
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "ORDER BY 1, 2",
        "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = 'public' "
        "ORDER BY table_name, ordinal_position",
        "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
        # The oid too: a re-apply must not drop and recreate the type.
        "SELECT t.oid, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid "
        "WHERE t.typname = 'product_api' ORDER BY a.attnum",
        "SELECT extname, extversion, extnamespace::regnamespace::text FROM pg_extension ORDER BY 1",
        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
        "WHERE tgrelid = 'products'::regclass ORDER BY 1",
        "SELECT proname, pg_get_functiondef(oid) FROM pg_proc "
        "WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
        "SELECT objsubid, description FROM pg_description "
        "WHERE objoid = 'products'::regclass ORDER BY 1",
        "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_name = 'products' ORDER BY 1, 2",
    ]
    return [db.execute(q).fetchall() for q in queries]


def test_every_rule_is_a_named_constraint(db: Connection[Any]) -> None:
    rows = db.execute(
        "SELECT conname, contype FROM pg_constraint WHERE conrelid = 'products'::regclass"
    ).fetchall()

    assert {name for name, kind in rows if kind == "c"} == Product.__table__.info[CHECKS]
    assert ("products_pkey", "p") in rows
    not_null = db.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'products' AND is_nullable = 'NO'"
    ).fetchall()
    assert {c for (c,) in not_null} == {
        "id", "sku", "name", "price", "quantity", "reserved", "created_at", "updated_at",
    }  # fmt: skip


def test_indexes_serve_lookups_and_the_list_order(db: Connection[Any]) -> None:
    indexes = dict(
        db.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'products'")
    )

    assert "UNIQUE" in indexes["products_sku_lower_key"]
    assert "lower(sku) text_pattern_ops" in indexes["products_sku_lower_key"]
    assert indexes["products_created_at_id_idx"].endswith("(created_at, id)")


def test_table_and_columns_are_documented(db: Connection[Any]) -> None:
    described = db.execute(
        "SELECT objsubid FROM pg_description WHERE objoid = 'products'::regclass"
    ).fetchall()

    assert len(described) == 1 + 11  # the table and each of its columns


@pytest.mark.parametrize(
    ("values", "constraint"),
    [
        ("('bad sku', 'n', 1)", "products_sku_format_check"),
        ("('', 'n', 1)", "products_sku_format_check"),
        ("(repeat('a', 65), 'n', 1)", "products_sku_format_check"),
        ("('A-1', '  ', 1)", "products_name_check"),
        ("('A-1', repeat('n', 201), 1)", "products_name_check"),
        ("('A-1', 'n', -0.01)", "products_price_check"),
        ("('A-1', 'n', 1.005)", "products_price_check"),
        ("('A-1', 'n', 10000000000)", "products_price_check"),
        ("('A-1', 'n', 'NaN')", "products_price_check"),
    ],
)
def test_direct_insert_breaking_a_rule_fails_with_23514(
    db: Connection[Any], values: str, constraint: str
) -> None:
    with pytest.raises(errors.CheckViolation) as raised:
        db.execute(f"INSERT INTO products (sku, name, price) VALUES {values}")

    assert raised.value.sqlstate == "23514"
    assert raised.value.diag.constraint_name == constraint


def test_direct_writes_obey_quantity_description_and_not_null(db: Connection[Any]) -> None:
    with pytest.raises(errors.CheckViolation, match="products_quantity_check"):
        db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A', 'n', 1, -1)")
    with pytest.raises(errors.CheckViolation, match="products_description_length_check"):
        db.execute(
            "INSERT INTO products (sku, name, price, description) "
            "VALUES ('A', 'n', 1, repeat('d', 2001))"
        )
    with pytest.raises(errors.NotNullViolation) as raised:
        db.execute("INSERT INTO products (sku, name) VALUES ('A', 'n')")
    assert raised.value.sqlstate == "23502"


def test_reorder_point_is_optional_and_bounded_like_quantity(db: Connection[Any]) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A', 'n', 1)")
    db.execute(
        "INSERT INTO products (sku, name, price, reorder_point) VALUES ('B', 'n', 1, 2147483647)"
    )
    with pytest.raises(errors.CheckViolation) as raised:
        db.execute(
            "INSERT INTO products (sku, name, price, reorder_point) VALUES ('C', 'n', 1, -1)"
        )
    assert raised.value.sqlstate == "23514"
    assert raised.value.diag.constraint_name == "products_reorder_point_check"
    # Past the top the integer type itself refuses (22003), as it does for quantity.
    with pytest.raises(errors.NumericValueOutOfRange):
        db.execute(
            "INSERT INTO products (sku, name, price, reorder_point) "
            "VALUES ('C', 'n', 1, 2147483648)"
        )

    assert db.execute("SELECT sku, reorder_point FROM products ORDER BY sku").fetchall() == [
        ("A", None),
        ("B", 2147483647),
    ]


def test_product_json_has_the_api_fields_in_the_api_order(db: Connection[Any]) -> None:
    db.execute("INSERT INTO products (sku, name, price, reorder_point) VALUES ('A', 'n', 1, 3)")

    (text,) = db.execute("SELECT product_json(p)::text FROM products p").fetchone() or ()

    assert list(json.loads(text)) == [
        "id", "sku", "name", "description", "price", "quantity", "reserved", "available",
        "reorder_point", "created_at", "updated_at",
    ]  # fmt: skip
    assert json.loads(text)["reorder_point"] == 3


def test_sku_is_unique_ignoring_case(db: Connection[Any]) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('Abc-1', 'n', 1)")

    with pytest.raises(errors.UniqueViolation) as raised:
        db.execute("INSERT INTO products (sku, name, price) VALUES ('aBC-1', 'n', 1)")

    assert raised.value.sqlstate == "23505"
    assert raised.value.diag.constraint_name == "products_sku_lower_key"


def test_price_is_stored_exactly_never_rounded(db: Connection[Any]) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A', 'n', 12.5)")

    assert db.execute("SELECT product_json(p)->>'price' FROM products p").fetchone() == ("12.50",)


def test_updated_at_moves_on_every_change_and_created_at_does_not(db: Connection[Any]) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price, created_at, updated_at) "
        "VALUES ('A', 'n', 1, '2020-01-01Z', '2020-01-01Z')"
    )

    db.execute("UPDATE products SET name = 'm'")

    created, updated = db.execute("SELECT created_at, updated_at FROM products").fetchone() or ()
    assert created.year == 2020 and updated.year > 2020


def test_applying_schema_twice_changes_nothing(db: Connection[Any]) -> None:
    before = _catalog(db)

    db.execute(SCHEMA.read_text())  # type: ignore[arg-type]  # a file, not user input
    db.execute(SCHEMA.read_text())  # type: ignore[arg-type]

    assert _catalog(db) == before


def test_service_role_can_write_rows_but_not_change_the_schema(
    postgresql: Connection[Any], pg_server: Cluster
) -> None:
    dsn = pg_server.app_dsn(postgresql.info.dbname)
    with psycopg.connect(dsn, autocommit=True) as app_db:
        app_db.execute("INSERT INTO products (sku, name, price) VALUES ('A', 'n', 1)")
        app_db.execute("SELECT adjust_stock('A', 2, 'received')")
        app_db.execute("UPDATE products SET name = 'm'")
        app_db.execute("DELETE FROM products")
        for ddl in (
            "ALTER TABLE products DROP CONSTRAINT products_price_check",
            "DROP TABLE products",
            "CREATE TABLE evil (x int)",
            "TRUNCATE products",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                app_db.execute(ddl)  # type: ignore[arg-type]


def test_every_constraint_and_index_says_what_it_guards(db: Connection[Any]) -> None:
    # psql users read the rules from the catalog (\dd, \di+): each one explains itself.
    rows = db.execute(
        "SELECT 'constraint ' || c.conname, obj_description(c.oid, 'pg_constraint')"
        "  FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
        " WHERE t.relnamespace = 'public'::regnamespace"
        " UNION ALL "
        "SELECT 'index ' || i.indexrelid::regclass, obj_description(i.indexrelid, 'pg_class')"
        "  FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid"
        " WHERE t.relnamespace = 'public'::regnamespace"
    ).fetchall()

    assert {"constraint products_price_check", "index products_sku_lower_key"} <= {
        name for name, _ in rows
    }
    assert sorted(name for name, comment in rows if not comment) == []

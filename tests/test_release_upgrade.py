"""A cluster of the previous release upgraded by the deploy path (db/migrate.sh): every row
intact."""

import hashlib
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg

from tests.cluster import (
    REPO,
    Cluster,
)
from tests.deploy_helpers import (
    bindir,
    git_show,
)

# ------------------------------------------------------------------------------------------
# Every later schema.sql must be an upgrade of the previous release's


def snapshot(dsn: str, tables: dict[str, list[str]]) -> dict[str, Any]:
    """Every row of `tables` (only the listed columns, as text, in primary key order) and
    where every sequence stands."""
    with psycopg.connect(dsn) as conn:
        rows = {
            table: conn.execute(
                f"SELECT {', '.join(f'{c}::text' for c in columns)} FROM {table} ORDER BY 1, 2"
            ).fetchall()
            for table, columns in tables.items()
        }
        sequences = {
            f"{schema}.{name}": value
            for schema, name, value in conn.execute(
                "SELECT schemaname, sequencename, last_value FROM pg_sequences"
            )
        }
    return {"rows": rows, "sequences": sequences}


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    """The same rows and sequences; what a later schema adds (columns, tables, sequences) is
    not compared, as it was not there before."""
    assert after["rows"] == before["rows"]
    assert {name: after["sequences"].get(name) for name in before["sequences"]} == (
        before["sequences"]
    )


def public_tables(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        found: dict[str, list[str]] = {}
        for table, column in conn.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c"
            " JOIN information_schema.tables t USING (table_schema, table_name)"
            " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'"
            " ORDER BY c.table_name, c.ordinal_position"
        ):
            found.setdefault(table, []).append(column)
    return found


def test_previous_release_schema_upgrades_with_every_row_intact(
    pg_server: Cluster, tmp_path: Path
) -> None:
    old_schema = tmp_path / "previous-schema.sql"
    old_schema.write_text(git_show("schema.sql"))
    dbname = f"upgrade_{uuid.uuid4().hex[:12]}"
    admin = pg_server.admin_dsn(dbname)
    psql = [str(bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", admin]

    def apply(schema: Path) -> None:
        done = subprocess.run(
            [*psql, "-f", str(schema)], stderr=subprocess.PIPE, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr

    def schema_dump() -> str:
        out = subprocess.run(
            [str(bindir() / "pg_dump"), "--schema-only", "-d", admin],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        # pg_dump 15.14+ brackets its output with a random \restrict key.
        return re.sub(r"^\\(un)?restrict .*$", "", out, flags=re.MULTILINE)

    with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    try:
        apply(old_schema)
        # Rows as the service writes them: as inventory_app, through the old schema.
        with psycopg.connect(pg_server.app_dsn(dbname)) as app:
            for sku, name, description, price, quantity in [
                ("UP-1", "Blue mug", "Stoneware, 300 ml", "19.99", 5),
                ("up-2.b_c", "Ünïcødé — ☕", None, "0.00", 0),
                ("UP-3", "Crate", 'line one\nline two, "quoted"', "9999999999.99", 2147483647),
            ]:
                app.execute(
                    "INSERT INTO products (sku, name, description, price, quantity)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (sku, name, description, price, quantity),
                )
            app.execute("UPDATE products SET name = 'Red mug' WHERE sku = 'UP-1'")
            app.execute(
                "WITH p AS (UPDATE products SET quantity = quantity + d.delta"
                "           FROM (VALUES ('UP-1', 10), ('UP-2.B_C', 3)) AS d (sku, delta)"
                "           WHERE lower(products.sku) = lower(d.sku)"
                "           RETURNING products.id, d.delta, products.quantity)"
                " INSERT INTO stock_movements (product_id, delta, reason, note, quantity_after)"
                " SELECT id, delta, 'received', 'PO 4711', quantity FROM p"
            )
            app.execute(
                "INSERT INTO idempotency_keys (scope, key, request_hash, status, headers, body)"
                " VALUES ('POST /products', 'k-1', %s, 201, %s, %s),"
                "        ('POST /products/{sku}/adjustments', 'k 2', %s, NULL, NULL, NULL)",
                (
                    hashlib.sha256(b"one").digest(),
                    '{"content-type": "application/json", "location": "/products/UP-1"}',
                    b'{"sku": "UP-1"}\x00\xff',
                    hashlib.sha256(b"two").digest(),
                ),
            )
        tables = public_tables(admin)
        before = snapshot(admin, tables)
        assert all(before["rows"][t] for t in ("products", "stock_movements", "idempotency_keys"))

        apply(REPO / "schema.sql")
        assert_unchanged(before, snapshot(admin, tables))
        once = schema_dump()

        apply(REPO / "schema.sql")
        assert_unchanged(before, snapshot(admin, tables))
        assert schema_dump() == once

        # The service still works on the upgraded rows.
        with psycopg.connect(pg_server.app_dsn(dbname)) as app:
            app.execute("INSERT INTO products (sku, name, price) VALUES ('UP-4', 'After', 1)")
            app.execute("SELECT adjust_stock('UP-3', -1, 'sold')")
    finally:
        with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")

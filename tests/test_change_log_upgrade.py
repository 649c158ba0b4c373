"""Upgrading a live database of the release before the change log.

These tests talk SQL to the real database, as psql or a script would; the HTTP side of the
change log has its own tests.
"""

import subprocess
from typing import Any

import psycopg
import pytest
from psycopg import Connection

from tests.change_log_helpers import sequence, types_and_skus
from tests.cluster import REPO, Cluster
from tests.conftest import SCHEMA

# --- Upgrade -------------------------------------------------------------------------------


def _schema_before_the_change_log() -> str:
    """schema.sql as the last release before the change log had it (from git history)."""
    try:
        commits = subprocess.run(
            ["git", "log", "--format=%H", "--", "schema.sql"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        for commit in commits:
            text = subprocess.run(
                ["git", "show", f"{commit}:schema.sql"],
                cwd=REPO, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            if "product_changes" not in text:
                return text
    except (OSError, subprocess.CalledProcessError):
        pass
    pytest.skip("needs the repository's git history")


def test_upgrading_a_live_database_keeps_every_row_and_starts_the_log(
    postgresql: Connection[Any], pg_server: Cluster
) -> None:
    with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS upgrade_test")
        admin.execute("CREATE DATABASE upgrade_test")
    try:
        with psycopg.connect(pg_server.admin_dsn("upgrade_test"), autocommit=True) as old:
            old.execute(_schema_before_the_change_log())  # type: ignore[arg-type]
            old.execute(
                "INSERT INTO products (sku, name, price, quantity) "
                "SELECT 'U-' || g, 'n', 1, 10 FROM generate_series(1, 100) g"
            )
            old.execute(
                "WITH p AS (UPDATE products SET quantity = 11 RETURNING id) "
                "INSERT INTO stock_movements (product_id, delta, reason, quantity_after) "
                "SELECT id, 1, 'received', 11 FROM p"
            )
            # The columns that release had (later ones are added, never change these).
            rows = (
                "SELECT (SELECT array_agg((p.id, p.sku, p.name, p.description, p.price, "
                "p.quantity, p.created_at, p.updated_at) ORDER BY id) FROM products p)::text, "
                "(SELECT array_agg((m.id, m.product_id, m.delta, m.reason, m.note, "
                "m.quantity_after, m.created_at) ORDER BY id) FROM stock_movements m)::text"
            )
            before = old.execute(rows).fetchone()

            old.execute(SCHEMA.read_text())  # type: ignore[arg-type]  # a file, not user input
            old.execute(SCHEMA.read_text())  # type: ignore[arg-type]  # and again: idempotent

            assert old.execute(rows).fetchone() == before
            old.execute("DELETE FROM products WHERE sku = 'U-1'")
            assert old.execute("SELECT count(*) FROM stock_movements").fetchone() == (100,)
            sequence(old)
            assert types_and_skus(old) == [("product.deleted", "U-1")]
    finally:
        with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS upgrade_test")

"""Who may read, number and write the change log.

These tests talk SQL to the real database, as psql or a script would; the HTTP side of the
change log has its own tests.
"""

from typing import Any

import psycopg
import pytest
from psycopg import Connection, errors

from tests.change_log_helpers import events, sequence

# --- Who may do what -----------------------------------------------------------------------


def test_the_service_may_read_and_number_the_log_but_never_write_it(
    app_db: Connection[Any],
) -> None:
    app_db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    assert app_db.execute("SELECT product_changes_sequence()").fetchone() == (1,)
    assert len(events(app_db)) == 1

    for statement in (
        "INSERT INTO product_change_events (stmt, k, type, product_id, product, changed) "
        "VALUES (1000, 1, 'product.created', 1, '{}', '{}')",
        "UPDATE product_change_events SET product = '{}'",
        "DELETE FROM product_change_events",
        "TRUNCATE product_change_events",
        "INSERT INTO product_change_batches (last_seq, stmt, events, at) VALUES (9, 9, 1, now())",
        "DELETE FROM product_change_batches",
        "UPDATE product_changes_purged SET through = 5",
        "UPDATE product_changes_purged SET retention_days = 1",
        "UPDATE product_changes_sequencer SET high = 5",
        "UPDATE webhook_attempts SET outcome = 'delivered'",
        "DELETE FROM webhook_attempts",
    ):
        with pytest.raises(errors.InsufficientPrivilege):
            app_db.execute(statement)  # type: ignore[arg-type]


def test_analysts_read_the_log_but_neither_number_it_nor_see_webhooks(
    db: Connection[Any], analyst_dsn: str
) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    sequence(db)
    with psycopg.connect(analyst_dsn, autocommit=True) as analyst:
        assert [e["sku"] for e in events(analyst)] == ["A-1"]
        for statement in (
            "SELECT product_changes_sequence()",
            "SELECT product_changes_purge(30)",
            "SELECT secret FROM webhooks",
            "SELECT * FROM webhook_attempts",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                analyst.execute(statement)  # type: ignore[arg-type]


def test_only_the_service_role_may_run_the_sequencer_and_the_purge(db: Connection[Any]) -> None:
    rows = db.execute(
        "SELECT p.proname, coalesce(r.rolname, 'PUBLIC') "
        "FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a "
        "LEFT JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE p.proname IN ('product_changes_sequence', 'product_changes_purge', "
        "'product_changes_sequencer_role', 'product_changes_await') "
        "AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner"
    ).fetchall()

    assert sorted(rows) == [
        ("product_changes_await", "inventory_rw"),
        ("product_changes_purge", "inventory_rw"),
        ("product_changes_sequence", "inventory_rw"),
        ("product_changes_sequencer_role", "inventory_rw"),
    ]

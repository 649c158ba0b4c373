"""Every test starts from a database as good as new (tests/databases.py): whatever the test
before it wrote, left open or changed, the next one sees exactly what schema.sql makes."""

from typing import Any

from psycopg import Connection

from tests.databases import Databases

_TABLES = """
    SELECT c.oid::regclass::text FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1
"""


def contents(conn: Connection[Any]) -> dict[str, Any]:
    """Every table's rows and every sequence's position: what a test could see of the past."""
    seen: dict[str, Any] = {}
    for (table,) in conn.execute(_TABLES).fetchall():
        row = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
            f"FROM {table} t"
        ).fetchone()
        seen[f"table {table}"] = row
    for name, last in conn.execute(
        "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'"
    ).fetchall():
        seen[f"sequence {name}"] = last
    return seen


def template_contents(databases: Databases) -> dict[str, Any]:
    with databases.connect(databases.template) as conn:
        return contents(conn)


def make_a_past(conn: Connection[Any]) -> None:
    """Rows in most tables, sequences moved, the template's own row changed."""
    conn.execute("INSERT INTO products (sku, name, price) VALUES ('ISO-1', 'Isolated', 1)")
    conn.execute("SELECT adjust_stock('ISO-1', 5, 'received')")
    conn.execute("INSERT INTO locations (code, name) VALUES ('ISO-L', 'Isolated')")
    conn.execute("UPDATE locations SET name = 'Renamed' WHERE code = 'MAIN'")
    conn.execute("UPDATE products SET name = 'Renamed'")
    conn.execute("SELECT product_changes_sequence(1000, true)")  # numbered: batches, sequencer
    conn.execute("UPDATE product_changes_purged SET retention_days = 99, through = 7")
    conn.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, body) "
        "VALUES ('POST /products', 'k', '\\x00', 201, '')"
    )


def test_a_database_handed_out_again_holds_exactly_the_templates_rows(
    databases: Databases,
) -> None:
    expected = template_contents(databases)
    with databases.checkout() as conn:
        used = conn.info.dbname
        make_a_past(conn)
        past = contents(conn)
        # A session the test left behind, in a transaction holding a lock.
        leftover = databases.connect(used)
        leftover.execute("BEGIN")
        leftover.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
    # The past is really there to leak: most tables were written.
    assert sum(past[k] != expected[k] for k in expected) >= 5, past

    with databases.checkout() as conn:
        assert conn.info.dbname == used  # reused, not a new clone
        assert contents(conn) == expected
        others = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        assert others == (0,)
    leftover.close()


def test_a_database_whose_schema_changed_is_replaced_by_a_new_clone(
    databases: Databases,
) -> None:
    expected = template_contents(databases)
    with databases.checkout() as conn:
        used = conn.info.dbname
        conn.execute("ALTER TABLE products ADD COLUMN leaked integer")
        conn.execute("INSERT INTO products (sku, name, price) VALUES ('ISO-2', 'Isolated', 1)")

    with databases.checkout() as conn:
        assert conn.info.dbname != used
        columns = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'products'::regclass "
            "AND attname = 'leaked'"
        ).fetchall()
        assert columns == []
        assert contents(conn) == expected

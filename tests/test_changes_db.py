"""The change log in the database: triggers, the sequencer, retention, subscriptions' cursors.

These tests talk SQL to the real database, as psql or a script would; the HTTP side of the
change log has its own tests.
"""

import random
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import Connection, errors
from psycopg.types.json import Json

from tests.cluster import REPO, Cluster
from tests.conftest import SCHEMA
from tests.helpers import RFC3339_UTC, age_changes

# What the API runs for an adjustment, and psql users too.
ADJUST = "SELECT adjust_stock(%(sku)s, %(delta)s, 'received')"
# The fields an adjustment changes (updated_at only once per transaction: it is now()).
MOVED = ["quantity", "available", "updated_at"]
PAGE = "SELECT event FROM product_changes_page(%s, %s)"
BULK = "SET LOCAL inventory.change_log = bulk"


def sequence(conn: Connection[Any]) -> int:
    """Number everything committed so far (waiting for a running sequencer); how many."""
    total = 0
    while True:
        row = conn.execute("SELECT product_changes_sequence(1000, true)").fetchone()
        assert row is not None
        total += row[0]
        if row[0] == 0:
            return total


def events(conn: Connection[Any], after: int = 0) -> list[dict[str, Any]]:
    return [row[0] for row in conn.execute(PAGE, (after, 1_000_000))]


def types_and_skus(conn: Connection[Any]) -> list[tuple[str, str]]:
    return [(e["type"], e["sku"]) for e in events(conn)]


@pytest.fixture
def connect(postgresql: Connection[Any], pg_server: Cluster) -> Iterator[Any]:
    """Opens more superuser sessions on the test's database; closes them afterwards."""
    opened: list[Connection[Any]] = []

    def _connect(autocommit: bool = False) -> Connection[Any]:
        conn = psycopg.connect(pg_server.admin_dsn(postgresql.info.dbname), autocommit=autocommit)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def app_db(postgresql: Connection[Any], pg_server: Cluster) -> Iterator[Connection[Any]]:
    """A session as the service's role."""
    with psycopg.connect(pg_server.app_dsn(postgresql.info.dbname), autocommit=True) as conn:
        yield conn


# --- What the triggers write ---------------------------------------------------------------


def test_psql_insert_update_delete_each_log_one_event_with_the_state_after(
    db: Connection[Any],
) -> None:
    db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A-1', 'Mug', 1.5, 3)")
    db.execute("UPDATE products SET name = 'Cup' WHERE sku = 'A-1'")
    db.execute("DELETE FROM products WHERE sku = 'A-1'")

    assert sequence(db) == 3
    created, updated, deleted = events(db)

    assert [e["seq"] for e in (created, updated, deleted)] == ["1", "2", "3"]
    assert created["type"] == "product.created"
    assert created["sku"] == "A-1"
    assert created["product"]["name"] == "Mug"
    assert created["product"]["price"] == "1.50"
    assert created["changed"] == [] and created["movement"] is None
    assert updated["type"] == "product.updated"
    assert updated["product"]["name"] == "Cup"
    assert updated["changed"] == ["name", "updated_at"]
    assert deleted["type"] == "product.deleted"
    assert deleted["product"] == updated["product"]  # the last state
    assert deleted["changed"] == [] and deleted["movement"] is None
    assert all(RFC3339_UTC.match(e["at"]) for e in (created, updated, deleted))
    assert set(created) == {"seq", "type", "sku", "product", "changed", "movement", "at"}


@pytest.mark.parametrize(
    ("assignment", "changed"),
    [
        ("name = 'Cup'", ["name", "updated_at"]),
        ("price = 1.50", ["updated_at"]),  # the same price: "1.50" either way
        ("price = 2, description = 'd'", ["description", "price", "updated_at"]),
        ("reorder_point = 7", ["reorder_point", "updated_at"]),
        ("sku = 'B-1'", ["sku", "updated_at"]),
        ("name = name", ["updated_at"]),
    ],
)
def test_changed_lists_exactly_the_fields_whose_value_changed(
    db: Connection[Any], assignment: str, changed: list[str]
) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'Mug', 1.5)")

    db.execute(f"UPDATE products SET {assignment}")

    sequence(db)
    assert events(db)[-1]["changed"] == changed


def test_within_one_transaction_an_update_that_changes_nothing_logs_nothing(
    db: Connection[Any], connect: Any
) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'Mug', 1)")
    tx = connect()
    tx.execute("UPDATE products SET name = 'Cup'")
    tx.execute("UPDATE products SET name = 'Cup'")  # updated_at is the transaction's time
    tx.execute("UPDATE products SET name = 'Bowl'")
    tx.commit()

    sequence(db)
    assert [e["changed"] for e in events(db)] == [[], ["name", "updated_at"], ["name"]]


def test_changed_fields_cover_every_field_of_the_api_representation(db: Connection[Any]) -> None:
    # Two states of a product that differ in every column, whatever columns the table has:
    # a column added to products and product_json but not to product_changed_fields fails.
    distinct_values = {
        "bigint": (1, 2),
        "integer": (1, 2),
        "text": ("a", "b"),
        "numeric": ("1", "2"),
        "timestamp with time zone": ("2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"),
    }
    columns = db.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'products'::regclass AND attnum > 0 AND NOT attisdropped"
    ).fetchall()
    old = {name: distinct_values[kind][0] for name, kind in columns}
    new = {name: distinct_values[kind][1] for name, kind in columns}

    reported, fields = db.execute(
        "SELECT product_changed_fields(json_populate_record(NULL::products, %(old)s), "
        "                              json_populate_record(NULL::products, %(new)s)), "
        "       ARRAY(SELECT key FROM json_object_keys(product_json("
        "           json_populate_record(NULL::products, %(new)s))) WITH ORDINALITY k(key, i) "
        "           ORDER BY i)",
        {"old": Json(old), "new": Json(new)},
    ).fetchone() or (None, None)

    assert reported == fields


def test_an_adjustment_logs_one_event_carrying_its_movement_as_the_ledger_shows_it(
    db: Connection[Any],
) -> None:
    db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A-1', 'Mug', 1, 5)")

    db.execute(ADJUST, {"sku": "a-1", "delta": -2})

    sequence(db)
    created, adjusted = events(db)
    (movement,) = db.execute("SELECT movement_json(s) FROM stock_movements s").fetchone() or ()
    assert adjusted["type"] == "product.updated"
    assert adjusted["changed"] == MOVED
    assert adjusted["product"]["quantity"] == 3
    assert adjusted["movement"] == movement
    assert movement["delta"] == -2 and movement["quantity_after"] == 3
    assert created["movement"] is None


def test_an_edit_and_an_adjustment_in_one_transaction_are_two_events(
    db: Connection[Any], connect: Any
) -> None:
    db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A-1', 'Mug', 1, 5)")
    tx = connect()
    tx.execute("UPDATE products SET name = 'Cup'")
    tx.execute(ADJUST, {"sku": "A-1", "delta": 4})
    tx.commit()

    sequence(db)
    _, edited, moved = events(db)
    assert (edited["changed"], edited["product"]["quantity"], edited["movement"]) == (
        ["name", "updated_at"],
        5,
        None,
    )
    # updated_at is the transaction's time: the edit moved it already.
    assert (moved["changed"], moved["product"]["quantity"], moved["movement"]["delta"]) == (
        ["quantity", "available"],
        9,
        4,
    )


def test_two_movements_of_one_product_in_one_statement_are_two_events_in_order(
    db: Connection[Any],
) -> None:
    db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A-1', 'Mug', 1, 5)")

    db.execute(
        "INSERT INTO stock_movements (product_id, delta, reason, quantity_after) "
        "SELECT id, 1, 'received', 6 FROM products "
        "UNION ALL SELECT id, 2, 'received', 8 FROM products"
    )

    sequence(db)
    moved = events(db)[1:]
    assert [(e["movement"]["delta"], e["movement"]["quantity_after"]) for e in moved] == [
        (1, 6),
        (2, 8),
    ]
    # Each carries the product as the statement left it.
    assert [(e["changed"], e["product"]["quantity"]) for e in moved] == [(MOVED, 8)] * 2


def test_an_adjustment_in_a_savepoint_carries_its_movement(
    db: Connection[Any], connect: Any
) -> None:
    # A subtransaction writes its rows with an xid of its own: still one statement.
    db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A-1', 'Mug', 1, 5)")
    tx = connect()
    tx.execute("SAVEPOINT s")
    tx.execute(ADJUST, {"sku": "A-1", "delta": 2})
    tx.execute("RELEASE SAVEPOINT s")
    tx.commit()

    sequence(db)
    adjusted = events(db)[1]
    assert (adjusted["changed"], adjusted["movement"]["delta"]) == (MOVED, 2)
    assert len(events(db)) == 2


def test_two_adjustments_in_one_transaction_are_two_events_each_with_its_movement(
    db: Connection[Any], connect: Any
) -> None:
    db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A-1', 'Mug', 1, 5)")
    tx = connect()
    tx.execute(ADJUST, {"sku": "A-1", "delta": 1})
    tx.execute(ADJUST, {"sku": "A-1", "delta": -3})
    tx.commit()

    sequence(db)
    _, first, second = events(db)
    assert (first["product"]["quantity"], first["movement"]["delta"]) == (6, 1)
    assert (second["product"]["quantity"], second["movement"]["delta"]) == (3, -3)


def test_a_movement_inserted_by_psql_is_logged_like_an_adjustment(db: Connection[Any]) -> None:
    db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A-1', 'Mug', 1, 5)")

    db.execute(
        "INSERT INTO stock_movements (product_id, delta, reason, quantity_after) "
        "SELECT id, 1, 'correction', 6 FROM products"
    )

    sequence(db)
    _, logged = events(db)
    assert logged["type"] == "product.updated"
    assert logged["changed"] == MOVED
    assert logged["product"]["quantity"] == 6
    assert logged["movement"]["quantity_after"] == 6


@pytest.mark.parametrize("bulk", [False, True], ids=["row by row", "set-wise"])
def test_a_statement_of_many_rows_logs_every_row(
    db: Connection[Any], connect: Any, bulk: bool
) -> None:
    tx = connect()
    if bulk:
        tx.execute(BULK)
    tx.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'B-' || g, 'n', 1 FROM generate_series(1, 500) g"
    )
    tx.execute("UPDATE products SET price = 2 WHERE sku LIKE 'B-1%'")
    tx.execute("DELETE FROM products WHERE sku LIKE 'B-2%'")
    tx.commit()

    sequence(db)
    logged = types_and_skus(db)
    assert len(logged) == 500 + 111 + 111
    assert logged[:500] == [("product.created", f"B-{i}") for i in range(1, 501)]
    assert {t for t, _ in logged[500:611]} == {"product.updated"}
    assert {t for t, _ in logged[611:]} == {"product.deleted"}
    statements = db.execute("SELECT count(*) FROM product_change_batches").fetchone()
    assert statements == ((3,) if bulk else (722,))


@pytest.mark.parametrize("bulk", [False, True], ids=["row by row", "set-wise"])
def test_a_stock_count_logs_each_product_once_with_its_movement(
    db: Connection[Any], connect: Any, bulk: bool
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price, quantity) "
        "SELECT 'C-' || g, 'n', 1, g FROM generate_series(1, 50) g"
    )
    tx = connect()
    if bulk:
        tx.execute(BULK)
    # The import's shape: the edits and the count's movements in one statement.
    tx.execute(
        "WITH counted AS (UPDATE products SET name = 'counted' RETURNING id) "
        "INSERT INTO stock_movements (product_id, delta, reason, note, quantity_after) "
        "SELECT s.product_id, 10, 'correction', 'import', s.quantity + 10 "
        "FROM product_stock s JOIN counted c ON c.id = s.product_id"
    )
    tx.commit()

    sequence(db)
    counted = events(db)[50:]
    # Every movement is an event of its own, after the product's edit.
    assert len(counted) == 100
    edits, movements = counted[:50], counted[50:]
    assert all(e["changed"] == ["name", "updated_at"] and e["movement"] is None for e in edits)
    for event in movements:
        assert event["changed"] == ["quantity", "available"]
        assert event["movement"]["quantity_after"] == event["product"]["quantity"]
    assert len({e["movement"]["id"] for e in movements}) == 50


def test_an_upsert_logs_created_and_updated_rows(db: Connection[Any]) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'Mug', 1)")

    db.execute(
        "INSERT INTO products (sku, name, price) VALUES ('a-1', 'Cup', 1), ('B-1', 'Bowl', 1) "
        "ON CONFLICT (lower(sku) text_pattern_ops) DO UPDATE SET name = excluded.name"
    )

    sequence(db)
    assert [(e["type"], e["sku"], e["changed"]) for e in events(db)][1:] == [
        ("product.updated", "A-1", ["name", "updated_at"]),
        ("product.created", "B-1", []),
    ]


def test_a_big_statement_after_a_one_row_one_in_the_same_session_is_planned_linear(
    db: Connection[Any], connect: Any
) -> None:
    """PL/pgSQL keeps a trigger query's plan across calls: the plan made for a session's
    first, one-row statement also runs its next big one. With old and new rows matched by a
    plain join that plan was a nested loop over the two transition tables: quadratic (the
    stock counts of issue 18). Matched by a FULL JOIN, every plan is a hash or merge join."""
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'P-' || g, 'n', 1 FROM generate_series(1, 2000) g"
    )
    session = connect()
    notices: list[str] = []
    session.add_notice_handler(lambda notice: notices.append(notice.message_primary or ""))
    session.execute(BULK)
    session.execute("UPDATE products SET price = 2 WHERE sku = 'P-1'")  # planned here
    session.execute("LOAD 'auto_explain'")
    session.execute("SET LOCAL auto_explain.log_min_duration = 0")
    session.execute("SET LOCAL auto_explain.log_nested_statements = on")
    session.execute("SET LOCAL auto_explain.log_level = notice")

    session.execute("UPDATE products SET price = 3")
    session.rollback()

    (plan,) = [n for n in notices if "INSERT INTO product_change_events" in n]
    lines = plan.splitlines()
    scans = [i for i, line in enumerate(lines) if "Named Tuplestore Scan" in line]
    assert len(scans) == 2 and "rows=1 " in lines[scans[0]]  # the one-row statement's plan
    joins = [line for line in lines[: scans[0]] if "Join" in line or "Nested Loop" in line]
    assert "Full Join" in joins[-1], plan


def test_triggers_ignore_the_callers_search_path(db: Connection[Any]) -> None:
    db.execute(
        "CREATE SCHEMA evil; "
        "CREATE FUNCTION evil.product_json(p public.products) RETURNS json "
        "LANGUAGE sql AS $$ SELECT '{\"hijacked\": true}'::json $$"
    )
    db.execute("SET search_path = evil, public")

    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'Mug', 1)")

    db.execute("RESET search_path")
    sequence(db)
    assert events(db)[0]["product"]["sku"] == "A-1"


# --- Transactions --------------------------------------------------------------------------


def test_a_rolled_back_change_never_appears(db: Connection[Any], connect: Any) -> None:
    tx = connect()
    tx.execute("INSERT INTO products (sku, name, price) VALUES ('GONE-1', 'n', 1)")
    tx.rollback()
    tx.execute("INSERT INTO products (sku, name, price) VALUES ('KEPT-1', 'n', 1)")
    tx.execute("SAVEPOINT s")
    tx.execute("UPDATE products SET name = 'undone'")
    tx.execute("ROLLBACK TO SAVEPOINT s")
    tx.commit()

    sequence(db)
    assert types_and_skus(db) == [("product.created", "KEPT-1")]


def test_an_uncommitted_change_is_not_numbered_nor_served(
    db: Connection[Any], connect: Any
) -> None:
    tx = connect()
    tx.execute("INSERT INTO products (sku, name, price) VALUES ('OPEN-1', 'n', 1)")

    assert sequence(db) == 0
    assert events(db) == []
    tx.rollback()


def test_a_transaction_that_commits_late_is_served_after_what_was_served_never_skipped(
    db: Connection[Any], connect: Any
) -> None:
    late = connect()
    late.execute("INSERT INTO products (sku, name, price) VALUES ('LATE-1', 'n', 1)")
    db.execute("INSERT INTO products (sku, name, price) VALUES ('EARLY-1', 'n', 1)")
    sequence(db)
    served = events(db)
    assert [e["sku"] for e in served] == ["EARLY-1"]
    cursor = int(served[-1]["seq"])

    late.commit()
    sequence(db)

    assert [e["sku"] for e in events(db, cursor)] == ["LATE-1"]
    assert [e["sku"] for e in events(db)] == ["EARLY-1", "LATE-1"]
    # Why a cursor on the write order would have lost it: LATE-1 wrote first.
    order = dict(db.execute("SELECT product ->> 'sku', stmt FROM product_change_events").fetchall())
    assert order["LATE-1"] < order["EARLY-1"]


def test_per_product_order_is_the_order_of_the_changes_not_of_transaction_ids(
    db: Connection[Any], connect: Any
) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'v0', 1)")
    first_xid = connect()
    (older,) = first_xid.execute("SELECT pg_current_xact_id()::text::bigint").fetchone() or ()
    second_xid = connect()
    second_xid.execute("UPDATE products SET name = 'v1'")
    (newer,) = second_xid.execute("SELECT pg_current_xact_id()::text::bigint").fetchone() or ()
    second_xid.commit()
    first_xid.execute("UPDATE products SET name = 'v2'")  # after v1, from the older xid
    first_xid.commit()

    sequence(db)

    assert older < newer
    assert [e["product"]["name"] for e in events(db)] == ["v0", "v1", "v2"]


def test_a_movement_waits_for_a_concurrent_delete_of_its_product_and_then_fails(
    db: Connection[Any], connect: Any
) -> None:
    (product_id,) = (
        db.execute(
            "INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1) RETURNING id"
        ).fetchone()
        or ()
    )
    deleting = connect()
    deleting.execute("DELETE FROM products")
    outcome: list[BaseException] = []

    def insert_movement() -> None:
        with connect(autocommit=True) as conn:
            try:
                conn.execute(
                    "INSERT INTO stock_movements (product_id, delta, reason, quantity_after) "
                    "VALUES (%s, 1, 'received', 1)",
                    (product_id,),
                )
            except psycopg.Error as exc:
                outcome.append(exc)

    mover = threading.Thread(target=insert_movement)
    mover.start()
    mover.join(0.5)
    assert mover.is_alive()  # waiting for the delete's row lock
    deleting.commit()
    mover.join(5)

    assert len(outcome) == 1 and isinstance(outcome[0], errors.ForeignKeyViolation)


def test_movements_outlive_their_product_and_keep_its_id(db: Connection[Any]) -> None:
    db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A-1', 'n', 1, 5)")
    db.execute(ADJUST, {"sku": "A-1", "delta": -2})
    (old_id,) = db.execute("SELECT id FROM products").fetchone() or ()

    db.execute("DELETE FROM products")
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")

    assert db.execute("SELECT product_id, delta FROM stock_movements").fetchall() == [(old_id, -2)]
    sequence(db)
    assert [e["type"] for e in events(db)] == [
        "product.created", "product.updated", "product.deleted", "product.created",
    ]  # fmt: skip


def test_truncate_of_products_is_refused_because_it_would_bypass_the_log(
    db: Connection[Any],
) -> None:
    db.execute("INSERT INTO products (sku, name, price, quantity) VALUES ('A-1', 'Mug', 1, 5)")
    # Plainly (the stock's foreign key refuses first), or with the stock: each trigger refuses.
    for statement in ("TRUNCATE products", "TRUNCATE products CASCADE"):
        with pytest.raises((errors.FeatureNotSupported, errors.IntegrityConstraintViolation)):
            db.execute(statement)  # type: ignore[arg-type]
    assert db.execute("SELECT count(*) FROM products").fetchone() == (1,)


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


# --- The sequencer -------------------------------------------------------------------------


def test_one_sequencer_runs_at_a_time_the_other_returns_null(
    db: Connection[Any], connect: Any
) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    running = connect()
    assert running.execute("SELECT product_changes_sequence()").fetchone() == (1,)

    assert db.execute("SELECT product_changes_sequence()").fetchone() == (None,)
    running.commit()
    assert db.execute("SELECT product_changes_sequence()").fetchone() == (0,)


def test_seq_continues_after_every_event_was_purged(db: Connection[Any]) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    sequence(db)
    age_changes(db, 40)
    assert db.execute("SELECT product_changes_purge(30)").fetchone() == (1,)

    db.execute("INSERT INTO products (sku, name, price) VALUES ('B-1', 'n', 1)")
    sequence(db)

    assert [e["seq"] for e in events(db)] == ["2"]


def test_writers_do_not_notify_and_the_sequencer_announces_the_last_seq(
    db: Connection[Any], connect: Any
) -> None:
    listener = connect(autocommit=True)
    listener.execute("LISTEN product_changes")
    tx = connect()
    tx.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    tx.execute("UPDATE products SET name = 'm'")
    tx.commit()

    # No NOTIFY from the writing transaction (it would serialise commits): nothing yet.
    assert list(listener.notifies(timeout=0.3)) == []
    sequence(db)
    announced = [n.payload for n in listener.notifies(timeout=0.5, stop_after=1)]

    assert announced == ["2"]
    # No trigger on the tables writers change notifies.
    assert db.execute(
        "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid IN ('products'::regclass, 'stock_movements'::regclass) "
        "AND p.prosrc LIKE '%notify%'"
    ).fetchone() == (0,)


@pytest.mark.slow
@pytest.mark.alone  # it compares two timings: a busy machine decides it otherwise
def test_a_transaction_left_open_costs_the_sequencer_one_look_not_its_rows(
    db: Connection[Any], connect: Any
) -> None:
    """While an import of 50,000 rows has not committed, every run of the sequencer looks at
    its statement once (a hole), never at its rows: the runs stay as cheap as when idle."""

    def runs_take() -> float:
        started = time.perf_counter()
        for _ in range(20):
            db.execute("SELECT product_changes_sequence()")
        return time.perf_counter() - started

    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    sequence(db)
    idle = runs_take()
    open_import = connect()
    open_import.execute(BULK)
    open_import.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'I-' || g, 'n', 1 FROM generate_series(1, 50000) g"
    )
    # Others commit meanwhile: the sequencer numbers past the open one.
    for i in range(20):
        db.execute("INSERT INTO products (sku, name, price) VALUES (%s, 'n', 1)", (f"B-{i}",))
    sequence(db)

    busy = runs_take()
    holes = db.execute("SELECT cardinality(holes) FROM product_changes_sequencer").fetchone()
    open_import.commit()
    sequence(db)

    assert holes == (1,)
    assert busy < 10 * idle + 0.05, (idle, busy)
    assert len(events(db)) == 1 + 20 + 50_000
    assert [e["sku"] for e in events(db)][-50_000:][:2] == ["I-1", "I-2"]  # after the others


def test_a_late_statement_whose_xid_is_newer_than_a_committed_one_is_never_dropped(
    db: Connection[Any], connect: Any
) -> None:
    """A statement number and an xid are taken in different orders: here `late` has the
    newer xid but the older number. When `early` commits, a snapshot's xmax says nothing
    about `late`; the hole must wait for `late` itself, or its change is lost."""
    early, late = connect(), connect()
    early.execute("SELECT pg_current_xact_id()")  # the older xid
    late.execute("INSERT INTO products (sku, name, price) VALUES ('LATE-1', 'n', 1)")
    early.execute("INSERT INTO products (sku, name, price) VALUES ('EARLY-1', 'n', 1)")
    early.commit()
    sequence(db)  # EARLY-1 numbered; LATE-1's number is a hole
    sequence(db)  # late is now the oldest transaction running

    late.commit()
    sequence(db)

    assert types_and_skus(db) == [("product.created", "EARLY-1"), ("product.created", "LATE-1")]


def test_a_number_taken_by_a_rolled_back_statement_is_dropped_once_no_one_can_commit_it(
    db: Connection[Any], connect: Any
) -> None:
    rolled_back = connect()
    rolled_back.execute("INSERT INTO products (sku, name, price) VALUES ('GONE-1', 'n', 1)")
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    sequence(db)
    assert db.execute("SELECT holes FROM product_changes_sequencer").fetchone() == ([1],)

    rolled_back.rollback()
    sequence(db)

    assert db.execute("SELECT holes FROM product_changes_sequencer").fetchone() == ([],)
    assert types_and_skus(db) == [("product.created", "A-1")]


AWAIT = "CALL product_changes_await(%s, %s, 100)"


def test_await_numbers_and_announces_what_commits_while_it_waits(
    db: Connection[Any], connect: Any, app_db: Connection[Any]
) -> None:
    listener = connect(autocommit=True)
    listener.execute("LISTEN product_changes")
    answer: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: answer.update(row=app_db.execute(AWAIT, (0.05, 2)).fetchone())
    )
    waiter.start()
    time.sleep(0.3)
    connect(autocommit=True).execute(
        "INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)"
    )
    committed = time.monotonic()

    announced = [n.payload for n in listener.notifies(timeout=1, stop_after=1)]
    heard = time.monotonic() - committed
    still_waiting = waiter.is_alive()
    waiter.join(5)

    assert announced == ["1"]
    assert heard < 0.5 and still_waiting  # numbered as it came, not when the call ended
    assert answer["row"] == (1,)
    assert types_and_skus(db) == [("product.created", "A-1")]


def test_await_numbers_a_burst_of_commits_in_batches_not_one_by_one(
    db: Connection[Any], connect: Any, app_db: Connection[Any]
) -> None:
    # Under load a look that numbers something is followed by the next only a poll later:
    # numbering in batches, not a sequencer transaction (and a NOTIFY) per writer's commit.
    waiter = threading.Thread(target=lambda: app_db.execute(AWAIT, (0.5, 1.8)))
    waiter.start()
    writer = connect(autocommit=True)
    for i in range(40):
        writer.execute("INSERT INTO products (sku, name, price) VALUES (%s, 'n', 1)", (f"B-{i}",))
        time.sleep(0.03)
    waiter.join(5)
    sequence(db)

    runs = db.execute("SELECT count(DISTINCT xmin::text) FROM product_change_batches").fetchone()
    assert runs is not None and runs[0] <= 5, runs  # 3 or 4 looks, and the last sequence()
    assert len(events(db)) == 40


def test_await_with_nothing_to_number_returns_0_when_its_time_is_up(
    app_db: Connection[Any],
) -> None:
    started = time.monotonic()
    assert app_db.execute(AWAIT, (0.05, 0.3)).fetchone() == (0,)
    assert time.monotonic() - started >= 0.3


def test_await_looks_in_a_transaction_of_its_own_each_time(
    connect: Any, app_db: Connection[Any]
) -> None:
    # Nothing held between looks: no snapshot as old as the wait holds back vacuum.
    waiter = threading.Thread(target=lambda: app_db.execute(AWAIT, (0.05, 2)))
    waiter.start()
    time.sleep(1.5)
    ages = (
        connect(autocommit=True)
        .execute(
            "SELECT extract(epoch FROM clock_timestamp() - xact_start) FROM pg_stat_activity "
            "WHERE query LIKE 'CALL product_changes_await%%' AND state = 'active'"
        )
        .fetchall()
    )
    waiter.join(5)

    assert len(ages) == 1
    assert ages[0][0] < 0.5


# --- Retention -----------------------------------------------------------------------------


def test_retention_removes_old_events_in_batches_oldest_first(db: Connection[Any]) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'A-' || g, 'n', 1 FROM generate_series(1, 5) g"
    )
    sequence(db)
    age_changes(db, 31, through_seq=3)

    purged = [db.execute("SELECT product_changes_purge(30, 2)").fetchone() for _ in range(3)]

    assert purged == [(2,), (1,), (0,)]
    assert db.execute("SELECT through FROM product_changes_purged").fetchone() == (3,)
    assert [e["seq"] for e in events(db)] == ["4", "5"]


def test_retention_keeps_what_a_webhook_has_yet_to_receive(db: Connection[Any]) -> None:
    (webhook,) = (
        db.execute(
            "INSERT INTO webhooks (url, events, secret) "
            "VALUES ('https://example.com/hook', '{*}', 'whsec_MDEyMzQ1Njc4OWFiY2RlZg==') "
            "RETURNING id"
        ).fetchone()
        or ()
    )
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    db.execute("DELETE FROM products")
    db.execute("INSERT INTO products (sku, name, price) VALUES ('B-1', 'n', 1)")
    sequence(db)
    age_changes(db, 31, through_seq=3)
    db.execute(
        "INSERT INTO webhook_retries (webhook_id, seq, attempts, next_attempt_at, give_up_at) "
        "VALUES (%s, 2, 1, now(), now() + interval '1 hour')",
        (webhook,),
    )

    assert db.execute("SELECT product_changes_purge(30)").fetchone() == (1,)
    assert [e["seq"] for e in events(db)] == ["2", "3"]

    db.execute("DELETE FROM webhook_retries")
    assert db.execute("SELECT product_changes_purge(30)").fetchone() == (2,)


def test_retention_of_less_than_a_day_is_refused(db: Connection[Any]) -> None:
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("SELECT product_changes_purge(0)")


def test_the_service_cannot_purge_within_the_owners_retention(
    db: Connection[Any], app_db: Connection[Any]
) -> None:
    """Issue 19, finding 12: the service's role called the purge with a retention of one day
    and cut the 30-day trail. The floor is the database's own, set by its owner."""
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'A-' || g, 'n', 1 FROM generate_series(1, 3) g"
    )
    sequence(db)
    age_changes(db, 5)

    assert app_db.execute("SELECT product_changes_purge(1)").fetchone() == (0,)
    assert len(events(db)) == 3

    db.execute("UPDATE product_changes_purged SET retention_days = 4")  # the owner may
    assert app_db.execute("SELECT product_changes_purge(1)").fetchone() == (3,)


# --- Subscriptions --------------------------------------------------------------------------


def test_a_subscription_starts_after_the_newest_event_and_nothing_is_queued_per_event(
    db: Connection[Any],
) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    sequence(db)
    db.execute(
        "INSERT INTO webhooks (url, events, secret) "
        "VALUES ('https://a.example/', '{*}', 'whsec_MDEyMzQ1Njc4OWFiY2RlZg==')"
    )
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'B-' || g, 'n', 1 FROM generate_series(1, 100) g"
    )
    sequence(db)

    assert db.execute("SELECT after FROM webhooks").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM webhook_retries").fetchone() == (0,)


def test_at_most_100_subscriptions(db: Connection[Any]) -> None:
    db.execute(
        "INSERT INTO webhooks (url, events, secret) "
        "SELECT 'https://a.example/' || g, '{*}', 'whsec_MDEyMzQ1Njc4OWFiY2RlZg==' "
        "FROM generate_series(1, 100) g"
    )

    with pytest.raises(errors.CheckViolation) as refused:
        db.execute(
            "INSERT INTO webhooks (url, events, secret) "
            "VALUES ('https://b.example/', '{*}', 'whsec_MDEyMzQ1Njc4OWFiY2RlZg==')"
        )
    assert refused.value.diag.constraint_name == "webhooks_limit"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("url", "ftp://example.com/"),
        ("url", "https://"),
        ("events", ["product.moved"]),
        ("events", []),
        ("secret", "plain"),
    ],
)
def test_webhook_rules_are_constraints(db: Connection[Any], column: str, value: Any) -> None:
    row = {
        "url": "https://example.com/",
        "events": ["*"],
        "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZg==",
        column: value,
    }
    with pytest.raises(errors.CheckViolation):
        db.execute(
            "INSERT INTO webhooks (url, events, secret) VALUES (%(url)s, %(events)s, %(secret)s)",
            row,
        )


# --- Exactly once under concurrency --------------------------------------------------------


def test_concurrent_writers_and_late_commits_each_change_is_served_once_in_product_order(
    db: Connection[Any], connect: Any
) -> None:
    """8 writers adjust 5 shared products by +1 (some transactions touch two products and
    commit late); 2 sequencers race for the lock; a reader follows the cursor 7 at a time.
    Per product, the quantities it reads must be 1, 2, 3, ... with no gap or repeat."""
    writers, changes_each, skus = 8, 200, [f"P-{i}" for i in range(5)]
    db.execute("INSERT INTO products (sku, name, price) SELECT unnest(%s::text[]), 'n', 1", (skus,))
    sequence(db)
    start_after = len(skus)
    done = threading.Event()
    failures: list[BaseException] = []

    def guarded(work: Any) -> Any:
        def run(*args: Any) -> None:
            try:
                work(*args)
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        return run

    @guarded
    def write(seed: int) -> None:
        rng = random.Random(seed)
        with connect() as conn:
            made = 0
            while made < changes_each:
                pair = sorted(rng.sample(skus, 2))  # sorted: no deadlock between writers
                for sku in pair[: 1 + (made + 1 < changes_each and rng.random() < 0.2)]:
                    conn.execute(ADJUST, {"sku": sku, "delta": 1})
                    made += 1
                if rng.random() < 0.05:
                    time.sleep(0.02)  # commit late, after others numbered and served
                conn.commit()

    @guarded
    def sequencer() -> None:
        with connect(autocommit=True) as conn:
            while not done.is_set():
                conn.execute("SELECT product_changes_sequence(50)")
                time.sleep(0.002)

    seen: list[dict[str, Any]] = []

    @guarded
    def reader() -> None:
        with connect(autocommit=True) as conn:
            cursor = start_after
            idle_after_done = 0
            while idle_after_done < 3:
                page = [row[0] for row in conn.execute(PAGE, (cursor, 7))]
                seen.extend(page)
                if page:
                    cursor = int(page[-1]["seq"])
                elif done.is_set():
                    sequence(conn)
                    idle_after_done += 1

    began = time.monotonic()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    helpers = [threading.Thread(target=sequencer) for _ in range(2)]
    follower = threading.Thread(target=reader)
    for t in [*threads, *helpers, follower]:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    for t in [*helpers, follower]:
        t.join(60)
    elapsed = time.monotonic() - began

    assert failures == []
    unnumbered = db.execute(
        "SELECT e.stmt FROM product_change_events e WHERE e.k = 1 AND NOT EXISTS "
        "(SELECT FROM product_change_batches b WHERE b.stmt = e.stmt) ORDER BY 1"
    ).fetchall()
    state = db.execute("SELECT * FROM product_changes_sequencer").fetchone()
    assert unnumbered == [], (unnumbered, state)
    seqs = [int(e["seq"]) for e in seen]
    assert seqs == list(range(start_after + 1, start_after + writers * changes_each + 1))
    by_product: dict[str, list[int]] = defaultdict(list)
    for event in seen:
        assert event["movement"]["quantity_after"] == event["product"]["quantity"]
        by_product[event["sku"]].append(event["product"]["quantity"])
    assert sum(map(len, by_product.values())) == writers * changes_each
    for sku, quantities in by_product.items():
        assert quantities == list(range(1, len(quantities) + 1)), sku
    # The run did commit late: events whose id is below one numbered before them.
    (late,) = (
        db.execute(
            "SELECT count(*) FROM (SELECT stmt < max(stmt) OVER (ORDER BY last_seq ROWS BETWEEN "
            "UNBOUNDED PRECEDING AND 1 PRECEDING) AS late FROM product_change_batches) b "
            "WHERE late"
        ).fetchone()
        or ()
    )
    assert late > 0
    print(
        f"\n{writers} writers, {len(seen)} events ({late} committed late), 0 duplicates, "
        f"0 lost, {elapsed:.1f} s"
    )


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

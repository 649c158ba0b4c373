"""The change log's triggers: what each write logs, and when it is seen (transactions).

These tests talk SQL to the real database, as psql or a script would; the HTTP side of the
change log has its own tests.
"""

import threading
from typing import Any

import psycopg
import pytest
from psycopg import Connection, errors
from psycopg.types.json import Json

from tests.change_log_helpers import ADJUST, BULK, MOVED, events, sequence, types_and_skus
from tests.helpers import RFC3339_UTC

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

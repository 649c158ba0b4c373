"""The change log's sequencer: numbering what commits, once, in order, under concurrency.

These tests talk SQL to the real database, as psql or a script would; the HTTP side of the
change log has its own tests.
"""

import random
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from psycopg import Connection

from tests.change_log_helpers import ADJUST, BULK, PAGE, events, sequence, types_and_skus
from tests.helpers import age_changes

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

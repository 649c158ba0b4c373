"""Helpers for the stock, PATCH and idempotency tests: the ledger check, overlap sampling."""

import threading
from typing import Any

import psycopg
from httpx import AsyncClient, Response
from psycopg import Connection


async def adjust(
    client: AsyncClient, sku: str, delta: int, reason: str = "received", **extra: Any
) -> Response:
    headers = extra.pop("headers", None)
    return await client.post(
        f"/products/{sku}/adjustments",
        json={"delta": delta, "reason": reason, **extra},
        headers=headers,
    )


def assert_ledger_consistent(db: Connection[Any], sku: str, initial: int) -> list[int]:
    """quantity == initial + sum(deltas), and each quantity_after is the running total.

    Returns the deltas in ledger order.
    """
    row = db.execute(
        "SELECT id, quantity FROM products WHERE lower(sku) = lower(%s)", (sku,)
    ).fetchone()
    assert row is not None, sku
    product_id, quantity = row
    running = initial
    deltas = []
    for delta, after in db.execute(
        "SELECT delta, quantity_after FROM stock_movements WHERE product_id = %s ORDER BY id",
        (product_id,),
    ):
        running += delta
        deltas.append(delta)
        assert after == running, (deltas, after)
        assert after >= 0
    assert quantity == running == initial + sum(deltas)
    return deltas


def widen_race(db: Connection[Any], seconds: float = 0.01) -> None:
    """In this test's database only: every UPDATE of a product sleeps inside its row lock.

    The window between reading a quantity and writing it back becomes long enough that a
    read-modify-write or a check-then-write would lose updates in every run.
    """
    db.execute(
        "CREATE FUNCTION widen_race() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$; "
        "CREATE TRIGGER widen_race BEFORE UPDATE ON products "
        "FOR EACH ROW EXECUTE FUNCTION widen_race()"
    )


class Overlap:
    """Samples pg_stat_activity from a thread: proof that requests ran at once in PostgreSQL.

    `most_active` is the largest number of the app's backends seen running a statement at
    the same moment; `lock_waits` how many samples saw one of them waiting for a lock.
    """

    def __init__(self, dsn: str, dbname: str) -> None:
        self._dsn = dsn
        self._dbname = dbname
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.most_active = 0
        self.lock_waits = 0

    def _sample(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                active, waiting = conn.execute(
                    "SELECT count(*) FILTER (WHERE state = 'active'), "
                    "count(*) FILTER (WHERE wait_event_type = 'Lock') "
                    "FROM pg_stat_activity WHERE datname = %s AND usename = 'inventory_app'",
                    (self._dbname,),
                ).fetchone() or (0, 0)
                self.most_active = max(self.most_active, active)
                self.lock_waits += bool(waiting)
                self._stop.wait(0.002)

    def __enter__(self) -> "Overlap":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# Every ledger chains: per product and location, each quantity_after is the previous one plus
# its delta, and the last one is the stock there now; a product's totals are the sums of its
# stock rows. Lists the SKUs where that does not hold.
_BROKEN_LEDGERS = """
    SELECT p.sku
    FROM products p
    JOIN LATERAL (
        SELECT m.delta, m.quantity_after,
               lag(m.quantity_after) OVER w AS previous,
               row_number() OVER (PARTITION BY lower(m.location) ORDER BY m.id DESC) AS from_last,
               (SELECT s.quantity FROM product_stock s JOIN locations l ON l.id = s.location_id
                WHERE s.product_id = p.id AND lower(l.code) = lower(m.location)) AS stored
        FROM stock_movements m WHERE m.product_id = p.id
        WINDOW w AS (PARTITION BY lower(m.location) ORDER BY m.id)
    ) m ON true
    WHERE (m.previous IS NOT NULL AND m.quantity_after <> m.previous + m.delta)
       OR (m.from_last = 1 AND m.quantity_after <> coalesce(m.stored, 0))
    UNION
    SELECT p.sku
    FROM products p
    LEFT JOIN (SELECT product_id, sum(quantity) AS quantity, sum(reserved) AS reserved
               FROM product_stock GROUP BY product_id) s ON s.product_id = p.id
    WHERE (p.quantity, p.reserved) <> (coalesce(s.quantity, 0), coalesce(s.reserved, 0))
"""


def broken_ledgers(db: Connection[Any]) -> list[Any]:
    """The SKUs whose ledger does not add up to their quantity (see _BROKEN_LEDGERS)."""
    tables = (
        "SELECT to_regclass('product_stock') IS NOT NULL"
        " AND to_regclass('stock_movements') IS NOT NULL"
    )
    if db.execute(tables).fetchone() != (True,):
        return []
    return db.execute(_BROKEN_LEDGERS).fetchall()


def record_movements(
    db: Connection[Any], product_id: int, movements: list[tuple[int, str, Any]]
) -> None:
    """(delta, reason, created_at) rows into the ledger as a psql user writes them: in MAIN,
    each with the quantity it leaves there, in one statement."""
    db.execute(
        "INSERT INTO product_stock (product_id, location_id) VALUES (%s, 0) ON CONFLICT DO NOTHING",
        (product_id,),
    )
    deltas, reasons, times = zip(*movements, strict=True) if movements else ((), (), ())
    db.execute(
        "INSERT INTO stock_movements (product_id, delta, reason, created_at, quantity_after) "
        "SELECT s.product_id, m.delta, m.reason, coalesce(m.at, now()), "
        "       s.quantity + sum(m.delta) OVER (ORDER BY m.n) "
        "FROM unnest(%s::int[], %s::text[], %s::timestamptz[]) WITH ORDINALITY "
        "     m(delta, reason, at, n) "
        "JOIN product_stock s ON s.product_id = %s AND s.location_id = 0 "
        "ORDER BY m.n",
        (list(deltas), list(reasons), list(times), product_id),
    )

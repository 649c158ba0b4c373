"""What the change log's database tests share: the statements psql users run, and reading
the log as a subscriber does."""

from typing import Any

from psycopg import Connection

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

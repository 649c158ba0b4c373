"""The change log's retention: old events purged in batches, never what a webhook still needs.

These tests talk SQL to the real database, as psql or a script would; the HTTP side of the
change log has its own tests.
"""

from typing import Any

import pytest
from psycopg import Connection, errors

from tests.change_log_helpers import events, sequence
from tests.helpers import age_changes

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

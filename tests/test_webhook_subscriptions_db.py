"""Webhook subscriptions in the database: where they start, how many, their rules.

These tests talk SQL to the real database, as psql or a script would; the HTTP side of the
change log has its own tests.
"""

from typing import Any

import pytest
from psycopg import Connection, errors

from tests.change_log_helpers import sequence

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

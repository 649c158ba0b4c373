"""Small assertions shared by the HTTP tests."""

import re
from typing import Any

from httpx import Response

JSON = {"content-type": "application/json"}
# Sessions inside pg_sleep() but the sequencer's own, which waits in one between its looks
# (schema.sql: product_changes_await): a test's slow statement has reached its sleep when
# this counts 1.
SLEEPING = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
    "AND query NOT LIKE 'CALL product_changes_await%'"
)
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def product(sku: str = "ABC-1", **fields: Any) -> dict[str, Any]:
    """A valid POST /products body, with overrides."""
    return {"sku": sku, "name": "Blue mug", "price": "19.99", **fields}


def assert_problem(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == "about:blank"
    assert body["title"] and body["detail"]
    return body


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def age_changes(db: Any, days: int, *, through_seq: int | None = None) -> None:
    """Make the change log's events up to `through_seq` (all: None) `days` days old, as
    retention sees them (schema.sql: product_change_batches.at, the events' own at)."""
    through = "" if through_seq is None else "WHERE b.last_seq <= %(through)s"
    db.execute(
        "WITH aged AS (UPDATE product_change_batches b "
        "SET at = now() - make_interval(days => %(days)s) " + through + " RETURNING b.stmt) "
        "UPDATE product_change_events e SET at = now() - make_interval(days => %(days)s) "
        "FROM aged WHERE e.stmt = aged.stmt",
        {"days": days, "through": through_seq},
    )

"""app/core/errors.py: the one table from SQLSTATE and constraint to problem, with what only
the caller knows (the SKU, the delta) filled in. Real errors from PostgreSQL, no fakes."""

from typing import Any

import psycopg
import pytest
from httpx import AsyncClient
from psycopg import Connection

from app.core.errors import (
    DuplicateSku,
    RequestInProgress,
    StockLimitExceeded,
    ValidationFailed,
    from_database,
)
from tests.helpers import assert_problem, product


def refusal(db: Connection[Any], statement: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        db.execute(statement)
    return caught.value


async def test_a_duplicate_sku_is_named_as_the_client_sent_it(client: AsyncClient) -> None:
    assert (await client.post("/products", json=product("Abc-1"))).status_code == 201
    body = assert_problem(
        await client.post("/products", json=product("aBC-1")), 409, "duplicate_sku"
    )
    assert body["detail"] == "A product with SKU 'aBC-1' already exists."


def test_the_unique_sku_index_is_a_duplicate_sku_with_or_without_the_sku(
    db: Connection[Any],
) -> None:
    db.execute("INSERT INTO products (sku, name, price) VALUES ('A-1', 'n', 1)")
    exc = refusal(db, "INSERT INTO products (sku, name, price) VALUES ('a-1', 'n', 1)")
    named = from_database(exc, sku="a-1")
    assert isinstance(named, DuplicateSku) and "'a-1'" in named.detail
    unnamed = from_database(exc)
    assert isinstance(unnamed, DuplicateSku) and "this SKU" in unnamed.detail


def test_an_integer_out_of_range_is_a_stock_limit_only_for_an_adjustment(
    db: Connection[Any],
) -> None:
    exc = refusal(db, "SELECT 2147483647::integer + 1")
    assert exc.sqlstate == "22003"
    assert isinstance(from_database(exc, sku="A-1", delta=1), StockLimitExceeded)
    assert isinstance(from_database(exc), ValidationFailed)


def test_a_lock_wait_that_runs_out_is_a_request_in_progress(db: Connection[Any]) -> None:
    db.execute("SELECT pg_advisory_lock(20)")
    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        other.execute("SET lock_timeout = '10ms'")
        exc = refusal(other, "SELECT pg_advisory_lock(20)")
    assert exc.sqlstate == "55P03"
    mapped = from_database(exc)
    assert isinstance(mapped, RequestInProgress) and mapped.retryable

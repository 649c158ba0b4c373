"""Idempotency-Key on POST /products and POST /products/{sku}/adjustments (docs/api.md)."""

import asyncio
from collections import Counter
from typing import Any

import pytest
from httpx import AsyncClient, Response
from psycopg import Connection

from app.config import Settings
from app.database import open_database
from app.idempotency.runner import Idempotency
from tests.conftest import AppFactory, ClientFactory
from tests.helpers import SLEEPING, assert_problem, product
from tests.stock_helpers import adjust, assert_ledger_consistent

KEY = {"Idempotency-Key": "4f0c1b7e-retry-me"}

# Every sequence of requests in this module leaves consistent ledgers (checked after each test).
pytestmark = pytest.mark.usefixtures("ledgers_consistent")


def _same_response(first: Response, again: Response) -> None:
    assert again.status_code == first.status_code
    assert again.content == first.content
    for header in ("content-type", "location", "etag"):
        assert again.headers.get(header) == first.headers.get(header), header
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers


def _count(db: Connection[Any], table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


# --- Replays -----------------------------------------------------------------------------


async def test_a_repeated_create_replays_the_first_response_and_writes_once(
    client: AsyncClient, db: Connection[Any]
) -> None:
    first = await client.post("/products", json=product("ABC-1"), headers=KEY)
    again = await client.post("/products", json=product("ABC-1"), headers=KEY)

    assert first.status_code == 201
    _same_response(first, again)
    assert _count(db, "products") == 1
    assert _count(db, "idempotency_keys") == 1


async def test_a_repeated_adjustment_replays_and_moves_stock_once(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))

    first = await adjust(client, "ABC-1", -2, "sold", headers=KEY)
    await adjust(client, "ABC-1", 10)  # the product moves on meanwhile
    again = await adjust(client, "ABC-1", -2, "sold", headers=KEY)

    assert first.json()["quantity"] == 3
    _same_response(first, again)  # the first response, not the current state
    assert (await client.get("/products/ABC-1")).json()["quantity"] == 13
    assert assert_ledger_consistent(db, "ABC-1", initial=5) == [-2, 10]


async def test_the_same_request_in_another_spelling_is_a_replay(client: AsyncClient) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))
    first = await client.post(
        "/products/ABC-1/adjustments",
        content=b'{"delta": -1, "reason": "sold"}',
        headers={**KEY, "Content-Type": "application/json"},
    )

    again = await client.post(
        "/products/abc-1/adjustments",
        content=b'{"reason":"sold","delta":-1,"note":null}',
        headers={**KEY, "Content-Type": "application/json"},
    )

    _same_response(first, again)


async def test_failures_that_ran_are_replayed_too(client: AsyncClient, db: Connection[Any]) -> None:
    await client.post("/products", json=product("ABC-1", quantity=1))

    first = await adjust(client, "ABC-1", -2, "sold", headers=KEY)
    await adjust(client, "ABC-1", 5)  # now there would be enough
    again = await adjust(client, "ABC-1", -2, "sold", headers=KEY)

    assert_problem(first, 409, "insufficient_stock")
    _same_response(first, again)
    assert assert_ledger_consistent(db, "ABC-1", initial=1) == [5]


async def test_a_duplicate_sku_under_a_key_is_stored_and_replayed(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await client.post("/products", json=product("ABC-1"))

    first = await client.post("/products", json=product("abc-1"), headers=KEY)
    again = await client.post("/products", json=product("abc-1"), headers=KEY)

    assert_problem(first, 409, "duplicate_sku")
    _same_response(first, again)
    assert _count(db, "idempotency_keys") == 1


async def test_keys_are_scoped_to_their_operation(client: AsyncClient) -> None:
    created = await client.post("/products", json=product("ABC-1", quantity=5), headers=KEY)

    adjusted = await adjust(client, "ABC-1", 1, headers=KEY)

    assert created.status_code == 201
    assert adjusted.status_code == 200
    assert "idempotent-replayed" not in adjusted.headers


async def test_without_a_key_every_request_runs(client: AsyncClient, db: Connection[Any]) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))

    for _ in range(2):
        assert (await adjust(client, "ABC-1", 1)).status_code == 200

    assert assert_ledger_consistent(db, "ABC-1", initial=5) == [1, 1]
    assert _count(db, "idempotency_keys") == 0


# --- Reuse and invalid keys --------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"delta": -1, "reason": "sold"}, {"delta": -2, "reason": "sold"}),
        ({"delta": -1, "reason": "sold"}, {"delta": -1, "reason": "damaged"}),
        ({"delta": -1, "reason": "sold"}, {"delta": -1, "reason": "sold", "note": "x"}),
    ],
)
async def test_a_key_reused_with_another_body_is_422_and_runs_nothing(
    client: AsyncClient, db: Connection[Any], first: dict[str, Any], second: dict[str, Any]
) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))
    await client.post("/products/ABC-1/adjustments", json=first, headers=KEY)

    response = await client.post("/products/ABC-1/adjustments", json=second, headers=KEY)

    assert_problem(response, 422, "idempotency_key_reused")
    assert len(assert_ledger_consistent(db, "ABC-1", initial=5)) == 1


async def test_a_key_reused_for_another_product_is_422(client: AsyncClient) -> None:
    for sku in ("A-1", "B-1"):
        await client.post("/products", json=product(sku, quantity=5))
    await adjust(client, "A-1", 1, headers=KEY)

    response = await adjust(client, "B-1", 1, headers=KEY)

    assert_problem(response, 422, "idempotency_key_reused")


async def test_a_create_key_reused_with_another_product_is_422(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await client.post("/products", json=product("ABC-1"), headers=KEY)

    response = await client.post("/products", json=product("ABC-2"), headers=KEY)

    assert_problem(response, 422, "idempotency_key_reused")
    assert _count(db, "products") == 1


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"k" * 256,
        b"tab\there",
        b"bell\x07",
        b"del\x7f",
        "caf\u00e9".encode("latin-1"),
        b" leading-space",
        b"trailing-space ",
    ],
)
async def test_invalid_keys_are_422_validation_failed(
    client: AsyncClient, db: Connection[Any], key: bytes
) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))

    created = await client.post(
        "/products", json=product("ABC-2"), headers={"Idempotency-Key": key}
    )
    adjusted = await adjust(client, "ABC-1", 1, headers={"Idempotency-Key": key})

    for response in (created, adjusted):
        body = assert_problem(response, 422, "validation_failed")
        assert body["errors"][0]["field"].lower() == "idempotency-key"
    assert _count(db, "products") == 1
    assert _count(db, "stock_movements") == 0


@pytest.mark.parametrize("key", ["k", "k" * 255, "a key with spaces", "~!@#$%^&*()_+{}|:<>?"])
async def test_keys_of_1_to_255_printable_characters_are_accepted(
    client: AsyncClient, key: str
) -> None:
    first = await client.post("/products", json=product(), headers={"Idempotency-Key": key})
    again = await client.post("/products", json=product(), headers={"Idempotency-Key": key})

    assert first.status_code == 201
    _same_response(first, again)


# --- Concurrency -------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(3))
async def test_twenty_concurrent_adjustments_with_one_key_take_effect_once(
    wide_client: AsyncClient, db: Connection[Any], round_: int
) -> None:
    await wide_client.post("/products", json=product("ABC-1", quantity=50))

    responses = await asyncio.gather(
        *(adjust(wide_client, "ABC-1", -3, "sold", headers=KEY) for _ in range(20))
    )

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 409} and statuses[200] >= 1, statuses
    ran = [r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers]
    assert len(ran) == 1
    for r in responses:
        if r.status_code == 200:
            assert r.content == ran[0].content and r.headers["etag"] == ran[0].headers["etag"]
        else:
            assert_problem(r, 409, "request_in_progress")
    assert ran[0].json()["quantity"] == 47
    print(f"\n20 adjustments, one key (round {round_}): {len(ran)} ran, statuses {dict(statuses)}")
    assert assert_ledger_consistent(db, "ABC-1", initial=50) == [-3]


@pytest.mark.parametrize("round_", range(3))
async def test_twenty_concurrent_creates_with_one_key_create_one_product(
    wide_client: AsyncClient, db: Connection[Any], round_: int
) -> None:
    responses = await asyncio.gather(
        *(wide_client.post("/products", json=product("ABC-1"), headers=KEY) for _ in range(20))
    )

    created = [r for r in responses if r.status_code == 201]
    assert created and all(r.content == created[0].content for r in created)
    assert all(r.status_code in (201, 409) for r in responses)
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409, "request_in_progress")
    assert len([r for r in created if "idempotent-replayed" not in r.headers]) == 1
    assert _count(db, "products") == 1


def _slow_movements(db: Connection[Any], seconds: float) -> None:
    db.execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"PERFORM pg_sleep({seconds}); RETURN NEW; END $$; "
        "CREATE TRIGGER slow BEFORE INSERT ON stock_movements "
        "FOR EACH ROW EXECUTE FUNCTION slow()"
    )


async def _until_sleeping(db: Connection[Any]) -> None:
    for _ in range(500):  # bounded: 5 s
        if db.execute(SLEEPING).fetchone() == (1,):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the first request never reached pg_sleep")


async def test_a_repeat_while_the_first_runs_waits_and_replays(
    client: AsyncClient, db: Connection[Any], settings: Settings
) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))
    _slow_movements(db, 0.5)  # well inside idempotency_wait_seconds (2 s)
    assert settings.idempotency_wait_seconds >= 2

    first_task = asyncio.create_task(adjust(client, "ABC-1", 1, headers=KEY))
    await _until_sleeping(db)
    again = await adjust(client, "ABC-1", 1, headers=KEY)
    first = await first_task

    assert first.status_code == 200
    _same_response(first, again)
    assert assert_ledger_consistent(db, "ABC-1", initial=5) == [1]


async def test_a_repeat_that_outwaits_its_patience_is_409_and_the_work_runs_once(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    async with make_client(idempotency_wait_seconds=0.2) as c:
        await c.post("/products", json=product("ABC-1", quantity=5))
        _slow_movements(db, 1.5)

        first_task = asyncio.create_task(adjust(c, "ABC-1", 1, headers=KEY))
        await _until_sleeping(db)
        again = await adjust(c, "ABC-1", 1, headers=KEY)
        first = await first_task
        later = await adjust(c, "ABC-1", 1, headers=KEY)

    assert_problem(again, 409, "request_in_progress")
    assert again.headers["retry-after"]
    assert first.status_code == 200
    _same_response(first, later)
    assert assert_ledger_consistent(db, "ABC-1", initial=5) == [1]


async def test_a_request_that_failed_with_5xx_keeps_no_key_and_may_be_retried(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))
    db.execute(
        "CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$; "
        "CREATE TRIGGER conflict BEFORE INSERT ON stock_movements "
        "FOR EACH ROW EXECUTE FUNCTION conflict()"
    )
    failed = await adjust(client, "ABC-1", 1, headers=KEY)
    assert_problem(failed, 503, "conflict_retry")
    assert _count(db, "idempotency_keys") == 0
    db.execute("DROP TRIGGER conflict ON stock_movements")

    retried = await adjust(client, "ABC-1", 1, headers=KEY)

    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert assert_ledger_consistent(db, "ABC-1", initial=5) == [1]


# --- Expiry and purge --------------------------------------------------------------------


async def test_an_expired_key_is_not_replayed_even_before_the_purge(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))
    first = await adjust(client, "ABC-1", 1, headers=KEY)
    db.execute("UPDATE idempotency_keys SET created_at = now() - interval '24 hours 1 second'")

    again = await adjust(client, "ABC-1", 1, headers=KEY)
    replay = await adjust(client, "ABC-1", 1, headers=KEY)

    assert first.json()["quantity"] == 6
    assert again.status_code == 200 and "idempotent-replayed" not in again.headers
    assert again.json()["quantity"] == 7
    _same_response(again, replay)
    assert assert_ledger_consistent(db, "ABC-1", initial=5) == [1, 1]
    assert _count(db, "idempotency_keys") == 1


async def test_a_key_just_inside_24_hours_is_still_replayed(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await client.post("/products", json=product("ABC-1", quantity=5))
    first = await adjust(client, "ABC-1", 1, headers=KEY)
    db.execute("UPDATE idempotency_keys SET created_at = now() - interval '23 hours 59 minutes'")

    _same_response(first, await adjust(client, "ABC-1", 1, headers=KEY))


async def test_purge_deletes_expired_keys_in_batches_and_keeps_live_ones(
    settings: Settings, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, body, created_at) "
        "SELECT 'POST /products', 'old-' || i, '\\x00'::bytea, 201, ''::bytea, "
        "now() - interval '24 hours' - i * interval '1 second' FROM generate_series(1, 2500) i "
        "UNION ALL SELECT 'POST /products', 'live', '\\x00', 201, '', "
        "now() - interval '23 hours 59 minutes'"
    )
    assert settings.database_url is not None
    # The service's own role and a pool like the app's: the purge needs only its grants.
    async with open_database(settings.database_url, settings) as database:
        idempotency = Idempotency(database, ttl_seconds=86_400, wait_seconds=1)

        purged = await idempotency.purge_expired(batch=1000)
        again = await idempotency.purge_expired()

    assert (purged, again) == (2500, 0)
    assert db.execute("SELECT key FROM idempotency_keys").fetchall() == [("live",)]


@pytest.mark.background
async def test_the_service_purges_expired_keys_in_the_background(
    make_app: AppFactory, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status, body, created_at) "
        "VALUES ('POST /products', 'old', '\\x00', 201, '', now() - interval '25 hours'), "
        "       ('POST /products', 'new', '\\x00', 201, '', now())"
    )
    async with make_app(idempotency_purge_interval_seconds=0.05):
        for _ in range(100):  # bounded: 5 s
            keys = db.execute("SELECT key FROM idempotency_keys").fetchall()
            if keys == [("new",)]:
                break
            await asyncio.sleep(0.05)
    assert keys == [("new",)]

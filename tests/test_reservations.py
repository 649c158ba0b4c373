"""Reservations: hold stock for an order, fulfil, release, extend, expire; never oversell."""

import asyncio
import random
import time
from typing import Any

import pytest
from httpx import AsyncClient, Response
from psycopg import Connection

from tests.conftest import ClientFactory
from tests.helpers import RFC3339_UTC, assert_problem, product
from tests.stock_helpers import adjust, broken_ledgers

# At every location, the reserved units are what the active reservations hold there, and
# never more than the units on hand. Lists where that does not hold.
BROKEN_HOLDS = """
    SELECT s.product_id, s.location_id, s.quantity, s.reserved, coalesce(h.held, 0)
    FROM product_stock s
    LEFT JOIN (SELECT a.product_id, a.location_id, sum(a.quantity) AS held
               FROM reservation_allocations a JOIN reservations r ON r.id = a.reservation_id
               WHERE r.status = 'active'
               GROUP BY 1, 2) h ON (h.product_id, h.location_id) = (s.product_id, s.location_id)
    WHERE s.reserved <> coalesce(h.held, 0) OR s.reserved > s.quantity
"""


async def _reserve(client: AsyncClient, *lines: dict[str, Any], **extra: Any) -> Response:
    return await client.post("/reservations", json={"lines": list(lines), **extra})


def line(sku: str, quantity: int, location: str | None = None) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity} | ({"location": location} if location else {})


async def _stocked(client: AsyncClient, sku: str, **at: int) -> None:
    """A product with units at locations (created as needed): MAIN=3, WH_1=2 -> WH-1."""
    assert (await client.post("/products", json=product(sku))).status_code == 201
    for code, units in at.items():
        code = code.replace("_", "-")
        if code != "MAIN":
            await client.post("/locations", json={"code": code, "name": code})
        assert (await adjust(client, sku, units, location=code)).status_code == 200


async def test_a_reservation_holds_units_and_says_where(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _stocked(client, "A-1", MAIN=5)

    made = await _reserve(client, line("a-1", 2), reference="order-1")

    assert made.status_code == 201, made.text
    body = made.json()
    assert made.headers["location"] == f"/reservations/{body['id']}"
    assert list(body) == ["id", "reference", "status", "expires_at", "created_at", "lines"]
    assert (body["reference"], body["status"]) == ("order-1", "active")
    assert body["lines"] == [
        {"sku": "A-1", "quantity": 2, "allocations": [{"location": "MAIN", "quantity": 2}]}
    ]
    assert RFC3339_UTC.match(body["expires_at"]) and RFC3339_UTC.match(body["created_at"])
    item = (await client.get("/products/A-1")).json()
    assert (item["quantity"], item["reserved"], item["available"]) == (5, 2, 3)
    assert (await client.get(f"/reservations/{body['id']}")).json() == body
    assert db.execute(BROKEN_HOLDS).fetchall() == []


async def test_never_more_than_is_available_and_every_short_line_is_named(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _stocked(client, "A-1", MAIN=2)
    await _stocked(client, "B-1", MAIN=1)

    short = await _reserve(client, line("A-1", 1), line("B-1", 2), line("A-1", 2))

    body = assert_problem(short, 409, "insufficient_stock")
    # Lines of one SKU are added together before anything is checked.
    assert body["lines"] == [
        {"sku": "A-1", "location": None, "requested": 3, "available": 2},
        {"sku": "B-1", "location": None, "requested": 2, "available": 1},
    ]
    assert db.execute("SELECT count(*) FROM reservations").fetchone() == (0,)
    assert (await client.get("/products/A-1")).json()["reserved"] == 0


async def test_unlocated_lines_take_the_most_available_location_first_after_located_ones(
    client: AsyncClient,
) -> None:
    await _stocked(client, "A-1", MAIN=3, WH_1=5, WH_2=5)

    made = await _reserve(client, line("A-1", 8), line("a-1", 4, "wh-2"))

    assert made.status_code == 201, made.text
    # WH-2 first gives 4 to its own line, leaving WH-1 5, MAIN 3, WH-2 1: 8 is 5 + 3.
    assert made.json()["lines"] == [
        {"sku": "A-1", "quantity": 8, "allocations": [
            {"location": "WH-1", "quantity": 5}, {"location": "MAIN", "quantity": 3},
        ]},
        {"sku": "A-1", "quantity": 4, "allocations": [{"location": "WH-2", "quantity": 4}]},
    ]  # fmt: skip
    stock = (await client.get("/products/A-1/stock")).json()
    assert [(s["location"], s["reserved"], s["available"]) for s in stock["locations"]] == [
        ("MAIN", 3, 0),
        ("WH-1", 5, 0),
        ("WH-2", 4, 1),
    ]


async def test_fulfilling_takes_the_units_out_with_a_sale_per_allocation(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _stocked(client, "A-1", MAIN=2, WH_1=2)
    made = (await _reserve(client, line("A-1", 3))).json()

    fulfilled = await client.post(f"/reservations/{made['id']}/fulfil")

    assert fulfilled.status_code == 200, fulfilled.text
    assert fulfilled.json()["status"] == "fulfilled"
    assert fulfilled.json()["lines"] == made["lines"]  # what was held stays readable
    item = (await client.get("/products/A-1")).json()
    assert (item["quantity"], item["reserved"], item["available"]) == (1, 0, 1)
    sold = [
        m for m in (await client.get("/products/A-1/movements")).json() if m["reason"] == "sold"
    ]
    # A tie in what is available goes by code: MAIN's 2, then 1 of WH-1's.
    assert sorted((m["location"], m["delta"], m["note"]) for m in sold) == [
        ("MAIN", -2, f"reservation {made['id']}"),
        ("WH-1", -1, f"reservation {made['id']}"),
    ]
    assert broken_ledgers(db) == [] and db.execute(BROKEN_HOLDS).fetchall() == []


async def test_releasing_gives_the_units_back_and_an_ended_reservation_changes_no_more(
    client: AsyncClient,
) -> None:
    await _stocked(client, "A-1", MAIN=2)
    made = (await _reserve(client, line("A-1", 2))).json()

    released = await client.post(f"/reservations/{made['id']}/release")

    assert released.json()["status"] == "released"
    assert (await client.get("/products/A-1")).json()["available"] == 2
    for request in (
        client.post(f"/reservations/{made['id']}/fulfil"),
        client.post(f"/reservations/{made['id']}/release"),
        client.patch(f"/reservations/{made['id']}", json={"expires_in": 60}),
    ):
        problem = assert_problem(await request, 409, "reservation_not_active")
        assert problem["reservation_status"] == "released"
    assert (await client.get("/products/A-1")).json()["available"] == 2


async def test_extending_moves_the_expiry_from_now(client: AsyncClient) -> None:
    await _stocked(client, "A-1", MAIN=2)
    made = (await _reserve(client, line("A-1", 1), expires_in=60)).json()

    extended = await client.patch(f"/reservations/{made['id']}", json={"expires_in": 3600})

    assert extended.status_code == 200
    assert extended.json()["expires_at"] > made["expires_at"]
    assert extended.json()["status"] == "active"


async def test_an_expired_hold_never_refuses_anybody_and_is_committed_within_seconds(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _stocked(client, "A-1", MAIN=2)
    first = (await _reserve(client, line("A-1", 2), expires_in=1)).json()
    assert_problem(await _reserve(client, line("A-1", 1)), 409, "insufficient_stock")

    await asyncio.sleep(1.1)
    # Past its expiry it holds nothing: the next request takes the units at once.
    second = await _reserve(client, line("A-1", 2))

    assert second.status_code == 201, second.text
    shown = (await client.get(f"/reservations/{first['id']}")).json()
    assert shown["status"] == "expired"
    assert_problem(
        await client.post(f"/reservations/{first['id']}/fulfil"), 409, "reservation_not_active"
    )
    assert db.execute(BROKEN_HOLDS).fetchall() == []


@pytest.mark.background
async def test_the_sweep_expires_holds_nobody_asks_about(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _stocked(client, "A-1", MAIN=2)
    made = (await _reserve(client, line("A-1", 2), expires_in=1)).json()

    deadline = time.monotonic() + 1 + 5
    while time.monotonic() < deadline:
        row = db.execute("SELECT status FROM reservations WHERE id = %s", (made["id"],)).fetchone()
        if row == ("expired",):
            break
        await asyncio.sleep(0.1)

    assert row == ("expired",)
    assert db.execute("SELECT reserved FROM products").fetchone() == (0,)


async def test_a_product_or_location_holding_reservations_cannot_go(
    client: AsyncClient,
) -> None:
    await _stocked(client, "A-1", WH_1=2)
    made = (await _reserve(client, line("A-1", 2))).json()

    assert_problem(await client.delete("/products/A-1"), 409, "product_in_use")
    assert_problem(await client.delete("/locations/WH-1"), 409, "location_in_use")
    assert_problem(
        await adjust(client, "A-1", -1, "sold", location="WH-1"), 409, "insufficient_stock"
    )
    await client.post(f"/reservations/{made['id']}/release")
    assert (await client.delete("/products/A-1")).status_code == 204


@pytest.mark.background
async def test_holds_are_change_events_naming_reserved_and_available(
    client: AsyncClient,
) -> None:
    await _stocked(client, "A-1", MAIN=2)
    made = (await _reserve(client, line("A-1", 2))).json()
    await client.post(f"/reservations/{made['id']}/release")

    async def events() -> list[dict[str, Any]]:
        for _ in range(100):
            got = (await client.get("/changes")).json()
            if len(got) >= 4:
                return got
            await asyncio.sleep(0.05)
        return got

    held, released = (await events())[2:4]
    assert held["changed"] == ["reserved", "available", "updated_at"]
    assert held["movement"] is None and held["product"]["reserved"] == 2
    assert released["changed"] == ["reserved", "available", "updated_at"]
    assert released["product"]["reserved"] == 0


async def test_reservations_are_listed_newest_first_and_filtered(client: AsyncClient) -> None:
    await _stocked(client, "A-1", MAIN=10)
    await _stocked(client, "B-1", MAIN=10)
    ids = [
        (await _reserve(client, line(sku, 1), reference=ref)).json()["id"]
        for sku, ref in [("A-1", "o-1"), ("B-1", "o-2"), ("A-1", "o-3")]
    ]
    await client.post(f"/reservations/{ids[0]}/release")

    async def listed(query: str) -> list[int]:
        return [r["id"] for r in (await client.get(f"/reservations{query}")).json()]

    assert await listed("") == ids[::-1]
    assert await listed("?status=active") == [ids[2], ids[1]]
    assert await listed("?status=released") == [ids[0]]
    assert await listed("?sku=a-1") == [ids[2], ids[0]]
    assert await listed("?reference=o-2") == [ids[1]]
    first = await client.get("/reservations?limit=2")
    assert [r["id"] for r in first.json()] == [ids[2], ids[1]]
    rest = await client.get(first.headers["link"].split(">")[0][1:])
    assert [r["id"] for r in rest.json()] == [ids[0]]


@pytest.mark.parametrize(
    "body",
    [
        {"lines": []},
        {"lines": [line("A-1", 0)]},
        {"lines": [line("A-1", 1)], "expires_in": 0},
        {"lines": [line("A-1", 1)], "expires_in": 604801},
        {"lines": [line("A-1", 1)], "reference": ""},
        {"lines": [line("A-1", 1)] * 101},
        {"lines": [{"sku": "A-1"}]},
        {"lines": [line("A-1", 1)], "status": "active"},
        {"lines": [line("A-1", 2**31 - 1), line("a-1", 1)]},
    ],
)
async def test_invalid_reservations_are_422(client: AsyncClient, body: dict[str, Any]) -> None:
    await _stocked(client, "A-1", MAIN=1)
    assert_problem(await client.post("/reservations", json=body), 422, "validation_failed")


async def test_unknown_things_are_404(client: AsyncClient) -> None:
    await _stocked(client, "A-1", MAIN=1)

    assert_problem(await _reserve(client, line("NOPE", 1)), 404, "product_not_found")
    assert_problem(await _reserve(client, line("A-1", 1, "NOWHERE")), 404, "location_not_found")
    for url in ("/reservations/424242", "/reservations/abc"):
        assert_problem(await client.get(url), 404, "reservation_not_found")
    assert_problem(await client.post("/reservations/424242/fulfil"), 404, "reservation_not_found")


async def test_never_oversell_under_a_storm_from_two_services(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    """20 units over two locations; 200 concurrent requests mixing 1-unit reservations,
    releases, adjustments and transfers, through two apps with their own pools."""
    async with (
        make_client(pool_size=10, pool_timeout=30.0) as one,
        make_client(pool_size=10, pool_timeout=30.0) as two,
    ):
        await _stocked(one, "HOT-1", MAIN=10, WH_1=10)
        rng = random.Random(21)
        statuses: dict[str, list[int]] = {}
        violations: list[Any] = []
        done = False

        async def watch() -> None:
            while not done:
                violations.extend(
                    db.execute(
                        "SELECT * FROM product_stock WHERE reserved > quantity OR reserved < 0"
                    ).fetchall()
                )
                await asyncio.sleep(0.01)

        async def request(i: int) -> None:
            client = one if i % 2 else two
            kind = rng.choice(["reserve"] * 4 + ["release", "adjust", "transfer"])
            if kind in ("reserve", "release"):
                r = await _reserve(client, line("HOT-1", 1))
                if r.status_code == 201 and kind == "release":
                    # Held, then given back by the other service.
                    other = two if client is one else one
                    r = await other.post(f"/reservations/{r.json()['id']}/release")
            elif kind == "adjust":
                r = await adjust(
                    client, "HOT-1", rng.choice([-1, 1]), location=rng.choice(["MAIN", "WH-1"])
                )
            else:
                src, dst = rng.sample(["MAIN", "WH-1"], 2)
                r = await client.post(
                    "/transfers", json={"sku": "HOT-1", "from": src, "to": dst, "quantity": 1}
                )
            statuses.setdefault(kind, []).append(r.status_code)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(request(i) for i in range(200)))
        done = True
        await watcher

    every = [s for codes in statuses.values() for s in codes]
    assert len(every) == 200
    assert set(every) <= {200, 201, 409}, statuses
    assert violations == []
    assert db.execute(BROKEN_HOLDS).fetchall() == []
    assert broken_ledgers(db) == []
    # Every 201 is backed by units: what is held is what the active reservations hold.
    (active,) = db.execute(
        "SELECT count(*) FROM reservations WHERE status = 'active'"
    ).fetchone() or (None,)
    item = db.execute("SELECT quantity, reserved FROM products").fetchone()
    assert item is not None and item[1] == active and item[1] <= item[0]
    print({k: {c: v.count(c) for c in set(v)} for k, v in statuses.items()}, item)


@pytest.mark.parametrize(
    "count",
    [b"sku,quantity\nA-1,1\n", b"sku,quantity,location\nA-1,1,MAIN\n"],
    ids=["total", "per-location"],
)
async def test_a_count_is_never_refused_for_units_only_expired_holds_had(
    client: AsyncClient, db: Connection[Any], count: bytes
) -> None:
    await _stocked(client, "A-1", MAIN=5)
    held = (await _reserve(client, line("A-1", 3))).json()
    # Past its expiry, and the sweep (not running here) has not reached it.
    db.execute("UPDATE reservations SET expires_at = now() - interval '1 second'")

    response = await client.post(
        "/products/import?on_conflict=update", content=count, headers={"content-type": "text/csv"}
    )

    assert response.status_code == 201, response.text
    assert (await client.get(f"/reservations/{held['id']}")).json()["status"] == "expired"
    assert db.execute("SELECT quantity, reserved FROM products").fetchone() == (1, 0)
    assert db.execute(BROKEN_HOLDS).fetchall() == []


async def test_a_count_that_would_take_reserved_units_is_409_naming_the_line(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _stocked(client, "A-1", MAIN=5)
    await _stocked(client, "B-1", MAIN=5)
    assert (await _reserve(client, line("A-1", 3))).status_code == 201

    response = await client.post(
        "/products/import?on_conflict=update",
        content=b"sku,quantity\nB-1,4\nA-1,1\n",
        headers={"content-type": "text/csv"},
    )

    body = assert_problem(response, 409, "insufficient_stock")
    assert [(e["line"], e["field"]) for e in body["errors"]] == [(3, "quantity")]
    assert "2 available" in body["errors"][0]["message"]
    assert db.execute("SELECT sku, quantity FROM products ORDER BY sku").fetchall() == [
        ("A-1", 5),
        ("B-1", 5),
    ]
    # Down to what is reserved is allowed.
    ok = await client.post(
        "/products/import?on_conflict=update",
        content=b"sku,quantity\nA-1,3\n",
        headers={"content-type": "text/csv"},
    )
    assert ok.status_code == 201, ok.text

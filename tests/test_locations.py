"""Locations, the stock at each (/products/{sku}/stock, /locations/{code}/stock), transfers."""

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from httpx import AsyncClient
from psycopg import Connection

from tests.helpers import RFC3339_UTC, assert_problem, product
from tests.stock_helpers import adjust, broken_ledgers


async def _location(client: AsyncClient, code: str, name: str = "Somewhere") -> dict[str, Any]:
    response = await client.post("/locations", json={"code": code, "name": name})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _transfer(client: AsyncClient, sku: str, from_: str, to: str, n: int, **extra: Any):  # type: ignore[no-untyped-def]
    return await client.post(
        "/transfers", json={"sku": sku, "from": from_, "to": to, "quantity": n, **extra}
    )


async def test_main_exists_from_the_start_and_locations_are_listed_oldest_first(
    client: AsyncClient,
) -> None:
    made = await client.post("/locations", json={"code": "WH-East", "name": "East warehouse"})

    assert made.status_code == 201
    assert made.headers["location"] == "/locations/WH-East"
    body = made.json()
    assert list(body) == ["code", "name", "created_at", "updated_at"]
    assert (body["code"], body["name"]) == ("WH-East", "East warehouse")
    assert RFC3339_UTC.match(body["created_at"])
    listed = (await client.get("/locations")).json()
    assert [loc["code"] for loc in listed] == ["MAIN", "WH-East"]
    assert (await client.get("/locations/wh-east")).json() == body


async def test_location_codes_are_unique_ignoring_case(client: AsyncClient) -> None:
    await _location(client, "WH-1")

    assert_problem(
        await client.post("/locations", json={"code": "wh-1", "name": "x"}),
        409,
        "duplicate_location",
    )
    assert_problem(
        await client.post("/locations", json={"code": "main", "name": "x"}),
        409,
        "duplicate_location",
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "bad code", "name": "n"}, "code"),
        ({"code": "", "name": "n"}, "code"),
        ({"code": "A" * 65, "name": "n"}, "code"),
        ({"code": "A", "name": "   "}, "name"),
        ({"code": "A", "name": "n" * 201}, "name"),
        ({"code": "A"}, "name"),
        ({"code": "A", "name": "n", "id": 3}, "id"),
    ],
)
async def test_invalid_locations_are_422_naming_the_field(
    client: AsyncClient, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await client.post("/locations", json=body), 422, "validation_failed")
    assert field in {e["field"] for e in problem["errors"]}


async def test_location_pages_follow_link_next(client: AsyncClient) -> None:
    for i in range(5):
        await _location(client, f"L-{i}")

    first = await client.get("/locations?limit=4")
    second = await client.get(first.headers["link"].split(">")[0][1:])

    assert [loc["code"] for loc in first.json()] == ["MAIN", "L-0", "L-1", "L-2"]
    assert [loc["code"] for loc in second.json()] == ["L-3", "L-4"]
    assert "link" not in second.headers


async def test_a_location_is_renamed_never_recoded_and_unknown_ones_are_404(
    client: AsyncClient,
) -> None:
    await _location(client, "WH-1", "Old")

    renamed = await client.patch("/locations/wh-1", json={"name": "New"})

    assert renamed.status_code == 200 and renamed.json()["name"] == "New"
    assert_problem(
        await client.patch("/locations/wh-1", json={"code": "X"}), 422, "validation_failed"
    )
    assert_problem(await client.get("/locations/NOPE"), 404, "location_not_found")
    assert_problem(await client.get("/locations/not%20a%20code"), 404, "location_not_found")
    assert_problem(
        await client.patch("/locations/NOPE", json={"name": "n"}), 404, "location_not_found"
    )
    assert_problem(await client.delete("/locations/NOPE"), 404, "location_not_found")


async def test_a_location_goes_only_when_empty_and_main_never(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _location(client, "WH-1")
    await client.post("/products", json=product("A-1"))
    assert (await adjust(client, "A-1", 2, location="WH-1")).status_code == 200

    assert_problem(await client.delete("/locations/MAIN"), 409, "location_in_use")
    assert_problem(await client.delete("/locations/wh-1"), 409, "location_in_use")
    assert (await adjust(client, "A-1", -2, "sold", location="WH-1")).status_code == 200
    assert (await client.delete("/locations/wh-1")).status_code == 204

    # Its code may be taken again; the movements made there keep showing it.
    await _location(client, "wh-1")
    movements = (await client.get("/products/A-1/movements")).json()
    assert [m["location"] for m in movements] == ["WH-1", "WH-1"]
    assert (await client.get("/products/A-1/stock")).json()["locations"] == []
    assert broken_ledgers(db) == []


async def test_the_stock_of_a_product_and_at_a_location(client: AsyncClient) -> None:
    await _location(client, "WH-2")
    await client.post("/products", json=product("b-2", quantity=4))
    await client.post("/products", json=product("A-1", quantity=1))
    await client.post("/products", json=product("C-3"))
    await adjust(client, "b-2", 6, location="wh-2")

    stock = (await client.get("/products/B-2/stock")).json()
    at_main = (await client.get("/locations/main/stock")).json()
    at_wh = (await client.get("/locations/WH-2/stock")).json()

    assert stock == {
        "sku": "b-2", "quantity": 10, "reserved": 0, "available": 10,
        "locations": [
            {"location": "MAIN", "quantity": 4, "reserved": 0, "available": 4},
            {"location": "WH-2", "quantity": 6, "reserved": 0, "available": 6},
        ],
    }  # fmt: skip
    # By SKU ignoring case; a product with nothing there is not listed.
    assert at_main == [
        {"sku": "A-1", "quantity": 1, "reserved": 0, "available": 1},
        {"sku": "b-2", "quantity": 4, "reserved": 0, "available": 4},
    ]
    assert at_wh == [{"sku": "b-2", "quantity": 6, "reserved": 0, "available": 6}]
    assert_problem(await client.get("/products/NOPE/stock"), 404, "product_not_found")
    assert_problem(await client.get("/locations/NOPE/stock"), 404, "location_not_found")


async def test_the_stock_at_a_location_pages_and_speaks_csv_and_ndjson(
    client: AsyncClient,
) -> None:
    for i in range(5):
        await client.post("/products", json=product(f"S-{i}", quantity=i + 1))

    first = await client.get("/locations/MAIN/stock?limit=3")
    second = await client.get(first.headers["link"].split(">")[0][1:])
    as_csv = await client.get("/locations/MAIN/stock", headers={"accept": "text/csv"})
    as_ndjson = await client.get(
        "/locations/MAIN/stock?limit=2", headers={"accept": "application/x-ndjson"}
    )

    assert [r["sku"] for r in first.json()] == ["S-0", "S-1", "S-2"]
    assert [r["sku"] for r in second.json()] == ["S-3", "S-4"]
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert as_csv.text.splitlines()[:2] == ["sku,quantity,reserved,available", "S-0,1,0,1"]
    assert as_ndjson.text == (
        '{"sku":"S-0","quantity":1,"reserved":0,"available":1}\n'
        '{"sku":"S-1","quantity":2,"reserved":0,"available":2}\n'
    )


async def test_the_whole_stock_at_a_location_is_streamed_in_every_format(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price, quantity) "
        "SELECT 'P-' || lpad(g::text, 4, '0'), 'n', 1, g FROM generate_series(1, 2500) g"
    )
    paged: list[dict[str, Any]] = []
    url: str | None = "/locations/MAIN/stock?limit=1000"
    while url is not None:
        page = await client.get(url)
        paged += page.json()
        url = page.headers["link"].split(">")[0][1:] if "link" in page.headers else None

    whole = await client.get("/locations/main/stock")
    as_ndjson = await client.get(
        "/locations/MAIN/stock", headers={"accept": "application/x-ndjson"}
    )
    as_csv = await client.get("/locations/MAIN/stock", headers={"accept": "text/csv"})
    first = await client.get("/locations/MAIN/stock?limit=1000")
    after = parse_qs(urlsplit(first.headers["link"].split(">")[0][1:]).query)["after"][0]
    rest = await client.get("/locations/MAIN/stock", params={"after": after})

    assert "content-length" not in whole.headers  # streamed, not held
    assert len(paged) == 2500 and whole.json() == paged
    assert [json.loads(line) for line in as_ndjson.text.splitlines()] == paged
    assert as_csv.text.split("\r\n") == [
        "sku,quantity,reserved,available",
        *(f"{r['sku']},{r['quantity']},0,{r['quantity']}" for r in paged),
        "",
    ]
    assert rest.json() == paged[1000:]
    assert_problem(await client.get("/locations/NOPE/stock"), 404, "location_not_found")


async def test_a_transfer_moves_units_and_leaves_the_totals_and_etag(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _location(client, "WH-1")
    created = await client.post("/products", json=product("A-1", quantity=5))

    moved = await _transfer(client, "a-1", "main", "wh-1", 3, note="rebalance")

    assert moved.status_code == 201, moved.text
    body = moved.json()
    assert list(body) == ["id", "sku", "from", "to", "quantity", "note", "created_at"]
    assert (body["sku"], body["from"], body["to"], body["quantity"], body["note"]) == (
        "A-1", "MAIN", "WH-1", 3, "rebalance",
    )  # fmt: skip
    after = await client.get("/products/A-1")
    assert after.headers["etag"] == created.headers["etag"]
    assert after.json()["updated_at"] == created.json()["updated_at"]
    movements = (await client.get("/products/A-1/movements")).json()
    assert [(m["location"], m["delta"], m["reason"], m["quantity_after"]) for m in movements] == [
        ("MAIN", -3, "transfer", 2),
        ("WH-1", 3, "transfer", 3),
    ]
    for url in (
        "/products/A-1/movements?location=wh-1",
        "/products/A-1/movements?limit=5&location=WH-1",
    ):
        assert [m["delta"] for m in (await client.get(url)).json()] == [3]
    assert (await client.get("/products/A-1/movements?location=NONE")).json() == []
    assert broken_ledgers(db) == []


async def test_a_transfer_of_more_than_is_available_is_409_and_moves_nothing(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _location(client, "WH-1")
    await client.post("/products", json=product("A-1", quantity=2))

    short = await _transfer(client, "A-1", "MAIN", "WH-1", 3)
    empty = await _transfer(client, "A-1", "WH-1", "MAIN", 1)

    assert assert_problem(short, 409, "insufficient_stock")["available"] == 2
    assert assert_problem(empty, 409, "insufficient_stock")["available"] == 0
    assert db.execute("SELECT count(*) FROM stock_movements").fetchone() == (0,)


async def test_transfers_refuse_what_cannot_be(client: AsyncClient) -> None:
    await client.post("/products", json=product("A-1", quantity=2))

    assert_problem(await _transfer(client, "A-1", "MAIN", "main", 1), 422, "validation_failed")
    assert_problem(await _transfer(client, "A-1", "MAIN", "NOPE", 1), 404, "location_not_found")
    assert_problem(await _transfer(client, "A-1", "NOPE", "MAIN", 1), 404, "location_not_found")
    assert_problem(await _transfer(client, "NOPE", "MAIN", "X", 1), 404, "product_not_found")
    for n in (0, -1, 2**31, 1.5, "1"):
        assert_problem(await _transfer(client, "A-1", "MAIN", "X", n), 422, "validation_failed")


async def test_concurrent_transfers_both_ways_never_deadlock_or_lose_a_unit(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _location(client, "WH-1")
    await client.post("/products", json=product("A-1", quantity=100))
    assert (await _transfer(client, "A-1", "MAIN", "WH-1", 50)).status_code == 201

    results = await asyncio.gather(
        *(
            _transfer(client, "A-1", *(("MAIN", "WH-1") if i % 2 else ("WH-1", "MAIN")), 1)
            for i in range(40)
        ),
        *(adjust(client, "A-1", 1, location="WH-1") for _ in range(10)),
    )

    assert {r.status_code for r in results} <= {200, 201}, [r.text for r in results]
    stock = (await client.get("/products/A-1/stock")).json()
    assert stock["quantity"] == 110
    assert sum(loc["quantity"] for loc in stock["locations"]) == 110
    assert broken_ledgers(db) == []


async def test_the_stock_report_at_a_location_counts_what_is_there(client: AsyncClient) -> None:
    await _location(client, "WH-1")
    await client.post("/products", json=product("A-1", price="2.50", quantity=4, reorder_point=1))
    await client.post("/products", json=product("B-1", price="1.00", reorder_point=0))
    await adjust(client, "A-1", 3, location="WH-1")
    await adjust(client, "B-1", 5, location="WH-1")
    assert (
        await client.post(
            "/reservations", json={"lines": [{"sku": "B-1", "quantity": 5, "location": "WH-1"}]}
        )
    ).status_code == 201

    at_wh = (await client.get("/reports/stock?location=wh-1")).json()
    at_main = (await client.get("/reports/stock?location=MAIN")).json()

    # Every product counts; units, reserved and value are what is there.
    assert {k: v for k, v in at_wh.items() if k != "as_of"} == {
        "products": 2, "units": 8, "reserved": 5, "value": "12.50", "out_of_stock": 0,
        "low_stock": 1,
    }  # fmt: skip
    assert {k: v for k, v in at_main.items() if k != "as_of"} == {
        "products": 2, "units": 4, "reserved": 0, "value": "10.00", "out_of_stock": 1,
        "low_stock": 1,
    }  # fmt: skip
    assert_problem(await client.get("/reports/stock?location=NOPE"), 404, "location_not_found")

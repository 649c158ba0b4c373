"""POST /products/import with a `location` column: a stock count per location, new products
landing where their records say, every record checked before anything is written."""

import time
from typing import Any

import pytest
from httpx import AsyncClient
from psycopg import Connection

from tests.helpers import assert_problem, product
from tests.stock_helpers import adjust
from tests.test_import_on_conflict import create, post

pytestmark = pytest.mark.usefixtures("ledgers_consistent")


async def _locations(client: AsyncClient, *codes: str) -> None:
    for code in codes:
        made = await client.post("/locations", json={"code": code, "name": code})
        assert made.status_code == 201, made.text


def stock(db: Connection[Any]) -> list[tuple[Any, ...]]:
    """(sku, location, quantity, reserved) of every stock row holding something."""
    return db.execute(
        "SELECT p.sku, l.code, s.quantity, s.reserved FROM product_stock s "
        "JOIN products p ON p.id = s.product_id JOIN locations l ON l.id = s.location_id "
        "WHERE s.quantity <> 0 OR s.reserved <> 0 ORDER BY p.sku, l.code"
    ).fetchall()


def movements(db: Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT p.sku, m.location, m.delta, m.reason, m.note, m.quantity_after "
        "FROM stock_movements m JOIN products p ON p.id = m.product_id ORDER BY m.id"
    ).fetchall()


def counts(response: Any) -> tuple[int, int, int]:
    assert response.status_code == 201, response.text
    body = response.json()
    return body["created"], body["updated"], body["unchanged"]


async def test_new_products_land_where_their_records_say(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _locations(client, "WH-2")
    done = await post(
        client,
        "sku,name,price,quantity,location\r\n"
        "A-1,Mug,5.00,3,MAIN\r\n"
        "a-1,Mug,5,4,wh-2\r\n"
        "B-1,Cup,2,7,WH-2\r\n"
        "C-1,Plate,1,2,\r\n",
    )

    # Per record: every record of a SKU that did not exist counts as created.
    assert counts(done) == (4, 0, 0)
    assert stock(db) == [
        ("A-1", "MAIN", 3, 0), ("A-1", "WH-2", 4, 0), ("B-1", "WH-2", 7, 0), ("C-1", "MAIN", 2, 0),
    ]  # fmt: skip
    # MAIN's count is where a new product starts; elsewhere a correction brings the units.
    assert movements(db) == [
        ("A-1", "WH-2", 4, "correction", "import", 4),
        ("B-1", "WH-2", 7, "correction", "import", 7),
    ]
    got = (await client.get("/products/A-1")).json()
    assert (got["name"], got["quantity"], got["available"]) == ("Mug", 7, 7)


async def test_a_count_per_location_moves_only_what_differs(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _locations(client, "WH-2", "EAST")
    await create(client, "A-1", quantity=10)
    await adjust(client, "A-1", 5, location="WH-2")
    await create(client, "B-1", name="Old", quantity=1)

    done = await post(
        client,
        "sku,quantity,location,name\r\nA-1,8,MAIN,Widget\r\nA-1,5,WH-2,Widget\r\n"
        "a-1,2,east,Widget\r\nB-1,1,MAIN,Old\r\n",
        on_conflict="update",
    )

    # A-1's name changed: each of its records updated it; B-1's record changed nothing.
    assert counts(done) == (0, 3, 1)
    assert stock(db) == [
        ("A-1", "EAST", 2, 0), ("A-1", "MAIN", 8, 0), ("A-1", "WH-2", 5, 0), ("B-1", "MAIN", 1, 0),
    ]  # fmt: skip
    assert movements(db)[-2:] == [
        ("A-1", "MAIN", -2, "correction", "import", 8),
        ("A-1", "EAST", 2, "correction", "import", 2),
    ]
    got = (await client.get("/products/A-1")).json()
    assert (got["name"], got["quantity"]) == ("Widget", 15)


async def test_a_count_that_changes_only_stock_is_an_update_of_that_record(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _locations(client, "WH-2")
    await create(client, "A-1", quantity=4)
    await adjust(client, "A-1", 2, location="WH-2")

    done = await post(
        client, "sku,quantity,location\r\nA-1,4,MAIN\r\nA-1,3,WH-2\r\n", on_conflict="update"
    )

    assert counts(done) == (0, 1, 1)
    assert stock(db) == [("A-1", "MAIN", 4, 0), ("A-1", "WH-2", 3, 0)]


async def test_skip_leaves_existing_products_and_their_stock_alone(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _locations(client, "WH-2")
    await create(client, "A-1", quantity=4)

    done = await post(
        client,
        "sku,name,price,quantity,location\r\nA-1,Other,9,1,MAIN\r\nA-1,Other,9,9,WH-2\r\n"
        "N-1,New,1,6,WH-2\r\n",
        on_conflict="skip",
    )

    assert counts(done) == (1, 0, 2)
    assert stock(db) == [("A-1", "MAIN", 4, 0), ("N-1", "WH-2", 6, 0)]
    assert (await client.get("/products/A-1")).json()["name"] == product("A-1")["name"]


async def test_ndjson_records_say_their_location_or_count_main(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _locations(client, "WH-2")
    body = (
        '{"sku": "A-1", "name": "Mug", "price": 5, "quantity": 2, "location": "WH-2"}\n'
        '{"sku": "A-1", "name": "Mug", "price": 5, "quantity": 1}\n'
    )

    done = await post(client, body, media_type="application/x-ndjson")

    assert counts(done) == (2, 0, 0)
    assert stock(db) == [("A-1", "MAIN", 1, 0), ("A-1", "WH-2", 2, 0)]


async def test_bad_records_are_named_by_line_and_nothing_is_written(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _locations(client, "WH-2")
    before = (stock(db), movements(db))

    refused = await post(
        client,
        "sku,name,price,quantity,location\r\n"
        "A-1,Mug,5,1,MAIN\r\n"  # line 2
        "A-1,Mug,5,2,NOWHERE\r\n"  # 3: no such location
        "a-1,Mug,5,3,main\r\n"  # 4: A-1 at MAIN again
        'B-1,Cup,2,1,MAIN\r\n"B-1","Cup!",2,1,WH-2\r\n'  # 5, 6: B-1's name differs
        "C-1,Plate,1,-1,WH-2\r\n",  # 7: a negative count
    )

    body = assert_problem(refused, 422, "validation_failed")
    named = {(e["line"], e["field"]): e["message"] for e in body["errors"]}
    assert named == {
        (3, "location"): "'NOWHERE' is not a location",
        (4, "location"): "repeats the SKU and location of line 2",
        (6, "name"): "differs from line 5: the records of one SKU must agree on every field "
        "but quantity and location",
        (7, "quantity"): named[7, "quantity"],
    }
    assert "negative" in named[7, "quantity"]
    assert body["invalid_records"] == 4
    assert (stock(db), movements(db)) == before
    assert db.execute("SELECT count(*) FROM products").fetchone() == (0,)


async def test_existing_skus_are_409_on_every_line_that_names_them(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _locations(client, "WH-2")
    await create(client, "A-1", quantity=1)

    refused = await post(
        client,
        "sku,name,price,quantity,location\r\nA-1,Mug,5,1,MAIN\r\nN-1,New,1,1,MAIN\r\n"
        "a-1,Mug,5,2,WH-2\r\n",
    )

    body = assert_problem(refused, 409, "duplicate_sku")
    assert [e["line"] for e in body["errors"]] == [2, 4]
    assert stock(db) == [("A-1", "MAIN", 1, 0)]


async def test_a_count_below_a_location_s_holds_is_409_naming_the_line(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _locations(client, "WH-2")
    await create(client, "A-1")
    await adjust(client, "A-1", 5, location="WH-2")
    held = await client.post(
        "/reservations", json={"lines": [{"sku": "A-1", "quantity": 3, "location": "WH-2"}]}
    )
    assert held.status_code == 201, held.text
    before = (stock(db), movements(db))

    refused = await post(
        client, "sku,quantity,location\r\nA-1,4,MAIN\r\nA-1,2,wh-2\r\n", on_conflict="update"
    )

    body = assert_problem(refused, 409, "insufficient_stock")
    assert body["errors"] == [
        {
            "field": "quantity",
            "message": "would leave WH-2 with fewer units than it has reserved (3)",
            "line": 3,
        }
    ]
    assert (stock(db), movements(db)) == before


@pytest.mark.slow
@pytest.mark.alone
async def test_a_large_file_of_counts_takes_time_in_proportion_to_its_records(
    client: AsyncClient, db: Connection[Any]
) -> None:
    # 100,000 records at two locations: about 10 s here. A statement that read a staging table
    # once per record (neither has an index) made 100,000 take over ten minutes; this one
    # would take minutes. The bound sits far from both.
    await _locations(client, "WH-2")
    body = "sku,name,price,quantity,location\n" + "".join(
        f"L-{i // 2},Name {i // 2},1.50,{i % 7},{'MAIN' if i % 2 else 'WH-2'}\n"
        for i in range(100_000)
    )

    started = time.monotonic()
    done = await post(client, body)
    took = time.monotonic() - started

    assert counts(done) == (100_000, 0, 0)
    assert took < 60, took
    assert db.execute("SELECT count(*), sum(quantity) FROM products").fetchone() == (
        50_000,
        sum(i % 7 for i in range(100_000)),
    )

"""POST /products/import?on_conflict=error|skip|update: existing SKUs refused, skipped, or
written over; a stock count recorded in the ledger; exports importing back as they are."""

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from httpx import AsyncClient, Response
from psycopg import Connection

from tests.helpers import assert_problem, product
from tests.stock_helpers import adjust, assert_ledger_consistent, widen_race

# Every sequence of requests in this module leaves consistent ledgers (checked after each test).
pytestmark = pytest.mark.usefixtures("ledgers_consistent")


async def post(
    client: AsyncClient,
    text: str,
    on_conflict: str | None = None,
    media_type: str = "text/csv",
    **headers: str,
) -> Response:
    params = {} if on_conflict is None else {"on_conflict": on_conflict}
    return await client.post(
        "/products/import",
        params=params,
        content=text,
        headers={"content-type": media_type, **headers},
    )


async def create(client: AsyncClient, sku: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/products", json=product(sku, **fields))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def rows(db: Connection[Any]) -> list[tuple[Any, ...]]:
    """Every product as stored, with its row version (xmin changes with any UPDATE)."""
    return db.execute(
        "SELECT sku, name, description, price, quantity, reorder_point, updated_at, "
        "xmin::text FROM products ORDER BY id"
    ).fetchall()


def movements(db: Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT p.sku, m.delta, m.reason, m.note, m.quantity_after "
        "FROM stock_movements m JOIN products p ON p.id = m.product_id ORDER BY m.id"
    ).fetchall()


# --- error, skip ---------------------------------------------------------------------------


async def test_error_is_the_default_and_names_existing_lines(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await create(client, "A-1")
    text = "sku,name,price\nB-1,n,1\na-1,n,1\n"

    for mode in (None, "error"):
        body = assert_problem(await post(client, text, mode), 409, "duplicate_sku")
        assert [(e["line"], e["field"]) for e in body["errors"]] == [(3, "sku")]
    assert [r[0] for r in rows(db)] == ["A-1"]


async def test_skip_leaves_existing_products_untouched_and_creates_the_rest(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await create(client, "A-1", quantity=5)
    before = rows(db)

    response = await post(client, "sku,name,price,quantity\nB-1,new,2,1\na-1,other,9,0\n", "skip")

    assert response.status_code == 201, response.text
    assert response.json() == {"created": 1, "updated": 0, "unchanged": 1}
    after = rows(db)
    assert after[0] == before[0]  # not even its row version moved
    assert after[1][:6] == ("B-1", "new", None, 2, 1, None)
    assert movements(db) == []


async def test_skip_needs_only_the_sku_for_products_that_exist(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await create(client, "A-1")

    kept = await post(client, "sku,quantity\nA-1,50\n", "skip")
    new = await post(client, "sku,quantity\nA-1,50\nZ-9,1\n", "skip")

    assert kept.json() == {"created": 0, "updated": 0, "unchanged": 1}
    body = assert_problem(new, 422, "validation_failed")
    assert [(e["line"], e["field"], e["message"]) for e in body["errors"]] == [
        (3, "name", "is required"),
        (3, "price", "is required"),
    ]


# --- update --------------------------------------------------------------------------------


async def test_update_writes_the_fields_the_file_has_and_keeps_the_others(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await create(client, "A-1", description="kept", quantity=4, reorder_point=2)

    response = await post(client, "sku,name,price\na-1,Renamed,7.5\n", "update")

    assert response.json() == {"created": 0, "updated": 1, "unchanged": 0}
    assert rows(db)[0][:6] == ("A-1", "Renamed", "kept", 7.5, 4, 2)
    assert movements(db) == []  # no quantity column: not a stock count


async def test_update_from_ndjson_keeps_keys_left_out_and_clears_nulls(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await create(client, "A-1", description="d", reorder_point=3)
    await create(client, "A-2", description="d", reorder_point=3)
    lines = [
        {"sku": "A-1", "price": "2.00"},
        {"sku": "A-2", "description": None, "reorder_point": None},
    ]

    response = await post(
        client, "\n".join(map(json.dumps, lines)), "update", "application/x-ndjson"
    )

    assert response.json() == {"created": 0, "updated": 2, "unchanged": 0}
    assert [r[:6] for r in rows(db)] == [
        ("A-1", "Blue mug", "d", Decimal("2.00"), 0, 3),
        ("A-2", "Blue mug", None, Decimal("19.99"), 0, None),
    ]


async def test_a_stock_count_records_one_correction_per_changed_quantity(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await create(client, "A-1", quantity=10)
    await create(client, "A-2", quantity=10)
    await create(client, "A-3", quantity=10)
    assert (await adjust(client, "A-1", -3, "sold")).status_code == 200  # 7 before the count

    response = await post(client, "sku,quantity\nA-1,9\nA-2,10\nA-3,0\n", "update")

    assert response.json() == {"created": 0, "updated": 2, "unchanged": 1}
    assert [(r[0], r[4]) for r in rows(db)] == [("A-1", 9), ("A-2", 10), ("A-3", 0)]
    assert movements(db) == [
        ("A-1", -3, "sold", None, 7),
        ("A-1", 2, "correction", "import", 9),
        ("A-3", -10, "correction", "import", 0),
    ]
    assert assert_ledger_consistent(db, "A-1", initial=10) == [-3, 2]
    assert assert_ledger_consistent(db, "A-3", initial=10) == [-10]
    ledger = await client.get("/products/A-1/movements")
    assert [(m["delta"], m["reason"], m["note"]) for m in ledger.json()] == [
        (-3, "sold", None),
        (2, "correction", "import"),
    ]


async def test_a_stock_count_shows_in_the_movements_report(
    client: AsyncClient, db: Connection[Any]
) -> None:
    for i in range(3):
        await create(client, f"C-{i}", quantity=5)

    await post(client, "sku,quantity\nC-0,8\nC-1,1\nC-2,5\n", "update")

    report = (await client.get("/reports/movements")).json()
    assert [(r["reason"], r["movements"], r["units"]) for r in report] == [("correction", 2, -1)]


async def test_rows_identical_to_their_product_change_nothing_not_even_updated_at(
    client: AsyncClient, db: Connection[Any]
) -> None:
    created = await create(client, "A-1", description="d", quantity=3, reorder_point=1)
    before = rows(db)
    etag = (await client.get("/products/A-1")).headers["etag"]

    # Same values written differently: SKU case, price scale.
    response = await post(
        client, "sku,name,description,price,quantity,reorder_point\na-1,Blue mug,d,19.990,3,1\n",
        "update",
    )  # fmt: skip

    assert response.json() == {"created": 0, "updated": 0, "unchanged": 1}
    assert rows(db) == before
    assert (await client.get("/products/A-1")).headers["etag"] == etag
    assert (await client.get("/products/A-1")).json() == created
    assert movements(db) == []


async def test_update_counts_created_updated_and_unchanged_together(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await create(client, "A-1", quantity=1)
    await create(client, "A-2", quantity=1)

    text = "sku,name,price,quantity\nA-1,Blue mug,19.99,1\nN-1,New,1,4\nA-2,Blue mug,19.99,6\n"

    response = await post(client, text, "update")

    assert response.json() == {"created": 1, "updated": 1, "unchanged": 1}
    assert [(r[0], r[4]) for r in rows(db)] == [("A-1", 1), ("A-2", 6), ("N-1", 4)]
    assert movements(db) == [("A-2", 5, "correction", "import", 6)]


async def test_update_needs_name_and_price_only_for_new_skus(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await create(client, "A-1", quantity=1)

    response = await post(client, "sku,quantity\nA-1,2\nN-1,3\n", "update")

    body = assert_problem(response, 422, "validation_failed")
    assert [(e["line"], e["field"]) for e in body["errors"]] == [(3, "name"), (3, "price")]
    assert [(r[0], r[4]) for r in rows(db)] == [("A-1", 1)]
    assert movements(db) == []


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("A-1,,1,1", "name"),  # given, null: would write NULL
        ("A-1,n,,1", "price"),
        ("A-1,n,1,", "quantity"),  # an update never defaults the quantity to 0
        ("A-1,n,abc,1", "price"),
        ("A-1,n,1.005,1", "price"),
        ("A-1,n,1,-1", "quantity"),
        ("A-1,  ,1,1", "name"),
    ],
)
async def test_invalid_updates_are_422_with_their_line_and_write_nothing(
    client: AsyncClient, db: Connection[Any], line: str, field: str
) -> None:
    await create(client, "A-1", quantity=5)
    before = rows(db)

    response = await post(client, f"sku,name,price,quantity\nB-1,ok,1,1\n{line}\n", "update")

    body = assert_problem(response, 422, "validation_failed")
    assert [(e["line"], e["field"]) for e in body["errors"]] == [(3, field)]
    assert rows(db) == before
    assert movements(db) == []


async def test_an_invalid_reorder_point_names_its_field(client: AsyncClient) -> None:
    await create(client, "A-1")

    response = await post(client, "sku,reorder_point\nA-1,-1\n", "update")

    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["field"] == "reorder_point"
    assert "products_reorder_point_check" in body["errors"][0]["message"]


@pytest.mark.parametrize("mode", ["error", "skip", "update"])
async def test_a_sku_twice_in_one_file_is_422_in_every_mode(
    client: AsyncClient, db: Connection[Any], mode: str
) -> None:
    await create(client, "A-1")  # existing SKUs too: skip and update never insert them

    response = await post(client, "sku,name,price\nA-1,x,1\nB-1,y,1\na-1,z,2\n", mode)

    body = assert_problem(response, 422, "validation_failed")
    assert [(e["line"], e["message"]) for e in body["errors"]] == [
        (4, "repeats the SKU of line 2 (SKUs are unique ignoring case)")
    ]
    assert [r[:2] for r in rows(db)] == [("A-1", "Blue mug")]


@pytest.mark.parametrize("params", [{"on_conflict": "replace"}, {"on_conflict": ""}, {"mode": "x"}])
async def test_bad_parameters_are_422(client: AsyncClient, params: dict[str, str]) -> None:
    response = await client.post(
        "/products/import",
        params=params,
        content="sku,name,price\n",
        headers={"content-type": "text/csv"},
    )
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["field"] == next(iter(params))


async def test_an_idempotency_key_is_bound_to_on_conflict(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await create(client, "A-1", quantity=1)
    key = {"Idempotency-Key": "count-2026-11-30"}

    first = await post(client, "sku,quantity\nA-1,3\n", "update", **key)
    again = await post(client, "sku,quantity\nA-1,3\n", "update", **key)
    other = await post(client, "sku,quantity\nA-1,3\n", "skip", **key)

    assert first.json() == again.json() == {"created": 0, "updated": 1, "unchanged": 0}
    assert again.headers["idempotent-replayed"] == "true"
    assert_problem(other, 422, "idempotency_key_reused")
    assert len(movements(db)) == 1


# --- exports import back -------------------------------------------------------------------


async def _catalogue(client: AsyncClient) -> None:
    await create(client, "R-1", description='say "hi", then\nleave', quantity=3, reorder_point=1)
    await create(client, "R-2", description="", price="0.10")
    await create(client, "r_3", name="=1+2", description=None, quantity=2_147_483_647)


@pytest.mark.parametrize("accept", ["text/csv", "application/x-ndjson"])
async def test_an_export_imports_back_unchanged_and_into_an_empty_database(
    client: AsyncClient, db: Connection[Any], accept: str
) -> None:
    await _catalogue(client)
    exported = (await client.get("/products", headers={"accept": accept})).text
    listed = (await client.get("/products")).json()
    before = rows(db)

    again = await post(client, exported, "update", accept)
    skipped = await post(client, exported, "skip", accept)
    db.execute("DELETE FROM products")
    restored = await post(client, exported, None, accept)

    assert again.json() == {"created": 0, "updated": 0, "unchanged": 3}
    assert skipped.json() == {"created": 0, "updated": 0, "unchanged": 3}
    assert restored.json() == {"created": 3, "updated": 0, "unchanged": 0}
    fields = ["sku", "name", "description", "price", "quantity", "reorder_point"]
    after = (await client.get("/products")).json()
    assert [{f: p[f] for f in fields} for p in after] == [{f: p[f] for f in fields} for p in listed]
    assert [r[:6] for r in rows(db)] == [r[:6] for r in before]


async def test_an_edited_export_is_a_stock_count(client: AsyncClient, db: Connection[Any]) -> None:
    await _catalogue(client)
    exported = (await client.get("/products", headers={"accept": "text/csv"})).text
    # The counted quantity of R-2 (0 in the export) is 4; everything else as exported.
    edited = exported.replace(',R-2,Blue mug,"",0.10,0,', ',R-2,Blue mug,"",0.10,4,')
    assert edited != exported

    response = await post(client, edited, "update")

    assert response.json() == {"created": 0, "updated": 1, "unchanged": 2}
    assert movements(db) == [("R-2", 4, "correction", "import", 4)]


# --- concurrency ---------------------------------------------------------------------------


async def test_a_stock_count_racing_a_sale_keeps_the_ledger_adding_up(
    wide_client: AsyncClient, db: Connection[Any]
) -> None:
    await create(wide_client, "P-1", quantity=10)
    await create(wide_client, "P-2", quantity=10)
    # Every UPDATE of a product now sleeps inside its row lock: the count, which renames P-1,
    # holds P-1 for 0.3 s while the sale of P-2 commits, after the count's statement began
    # and before it reaches P-2. The count's delta must be against the quantity it replaces
    # (9), not the one its snapshot saw (10).
    widen_race(db, 0.3)
    count = asyncio.create_task(
        post(wide_client, "sku,name,quantity\nP-1,renamed,4\nP-2,Blue mug,4\n", "update")
    )
    for _ in range(200):
        running = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'WITH changed AS%%' "
            "AND state = 'active' AND datname = current_database()"
        ).fetchone()
        if running == (1,):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the count's statement never started")

    sale = await adjust(wide_client, "P-2", -1, "sold")
    counted = await count

    assert sale.status_code == 200 and sale.json()["quantity"] == 9
    assert counted.json() == {"created": 0, "updated": 2, "unchanged": 0}
    assert [(r[0], r[4]) for r in rows(db)] == [("P-1", 4), ("P-2", 4)]
    assert movements(db) == [
        ("P-2", -1, "sold", None, 9),
        ("P-1", -6, "correction", "import", 4),
        ("P-2", -5, "correction", "import", 4),
    ]

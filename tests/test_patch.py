"""PATCH, DELETE and ETags / conditional requests (docs/api.md), over HTTP."""

from typing import Any

import pytest
from httpx import AsyncClient
from psycopg import Connection

from tests.helpers import RFC3339_UTC, assert_problem, product
from tests.stock_helpers import adjust

# Every sequence of requests in this module leaves consistent ledgers (checked after each test).
pytestmark = pytest.mark.usefixtures("ledgers_consistent")


async def _create(client: AsyncClient, sku: str = "ABC-1", **fields: Any) -> dict[str, Any]:
    response = await client.post("/products", json=product(sku, **fields))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# --- ETags -------------------------------------------------------------------------------


async def test_every_single_product_response_carries_the_same_strong_etag(
    client: AsyncClient,
) -> None:
    created = await client.post("/products", json=product("ABC-1"))
    fetched = await client.get("/products/abc-1")

    etag = created.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert fetched.headers["etag"] == etag
    assert fetched.json() == created.json()


async def test_etag_changes_after_patch_and_after_adjustment_and_after_psql(
    client: AsyncClient, db: Connection[Any]
) -> None:
    first = (await client.post("/products", json=product("ABC-1"))).headers["etag"]

    patched = await client.patch("/products/ABC-1", json={"name": "Red mug"})
    adjusted = await adjust(client, "ABC-1", 5)
    db.execute("UPDATE products SET description = %s", ("set with psql",))
    after_psql = (await client.get("/products/ABC-1")).headers["etag"]

    etags = [first, patched.headers["etag"], adjusted.headers["etag"], after_psql]
    assert len(set(etags)) == 4
    assert (await client.get("/products/ABC-1")).headers["etag"] == after_psql


async def test_etag_changes_when_psql_changes_the_stock(
    client: AsyncClient, db: Connection[Any]
) -> None:
    before = (await client.post("/products", json=product("ABC-1"))).headers["etag"]

    db.execute("SELECT adjust_stock('abc-1', 7, 'received')")

    response = await client.get("/products/ABC-1", headers={"If-None-Match": before})
    assert response.status_code == 200
    assert response.headers["etag"] != before


async def test_if_none_match_with_the_current_etag_is_304_with_etag_and_no_body(
    client: AsyncClient,
) -> None:
    etag = (await client.post("/products", json=product("ABC-1"))).headers["etag"]

    response = await client.get("/products/ABC-1", headers={"If-None-Match": etag})

    assert response.status_code == 304
    assert response.headers["etag"] == etag
    assert response.content == b""


@pytest.mark.parametrize(
    "header",
    ["*", '"nope", {etag}', "W/{etag}", '"a,b", W/{etag} , "c"', "{etag},garbage"],
)
async def test_if_none_match_accepts_star_lists_and_weak_tags(
    client: AsyncClient, header: str
) -> None:
    etag = (await client.post("/products", json=product("ABC-1"))).headers["etag"]

    response = await client.get(
        "/products/ABC-1", headers={"If-None-Match": header.format(etag=etag)}
    )

    assert response.status_code == 304


@pytest.mark.parametrize("header", ['"stale"', 'W/"stale", "other"', "garbage"])
async def test_if_none_match_with_other_etags_gets_the_full_product(
    client: AsyncClient, header: str
) -> None:
    await client.post("/products", json=product("ABC-1"))

    response = await client.get("/products/ABC-1", headers={"If-None-Match": header})

    assert response.status_code == 200
    assert response.json()["sku"] == "ABC-1"


async def test_if_none_match_on_a_missing_product_is_404(client: AsyncClient) -> None:
    response = await client.get("/products/NOPE", headers={"If-None-Match": "*"})

    assert_problem(response, 404, "product_not_found")


# --- PATCH -------------------------------------------------------------------------------


async def test_patch_changes_the_fields_sent_and_moves_updated_at_only(
    client: AsyncClient,
) -> None:
    before = await _create(client, description="Blue", quantity=4)

    response = await client.patch("/products/abc-1", json={"name": "Red mug", "price": 5})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    after = response.json()
    assert (after["name"], after["price"], after["description"]) == ("Red mug", "5.00", "Blue")
    assert (after["id"], after["sku"], after["quantity"]) == (before["id"], "ABC-1", 4)
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]
    assert RFC3339_UTC.match(after["updated_at"])
    assert (await client.get("/products/ABC-1")).json() == after


async def test_patch_description_null_clears_it(client: AsyncClient, db: Connection[Any]) -> None:
    await _create(client, description="Blue")

    response = await client.patch("/products/ABC-1", json={"description": None})

    assert response.json()["description"] is None
    assert db.execute("SELECT description FROM products").fetchone() == (None,)


async def test_patch_sets_and_null_clears_the_reorder_point(
    client: AsyncClient, db: Connection[Any]
) -> None:
    created = await client.post("/products", json=product("ABC-1", quantity=3))

    set_ = await client.patch("/products/ABC-1", json={"reorder_point": 5})
    kept = await client.patch("/products/ABC-1", json={"name": "Red mug"})
    cleared = await client.patch("/products/ABC-1", json={"reorder_point": None})

    assert set_.json()["reorder_point"] == 5
    assert set_.headers["etag"] != created.headers["etag"]
    assert kept.json()["reorder_point"] == 5
    assert cleared.json()["reorder_point"] is None
    assert db.execute("SELECT reorder_point, quantity FROM products").fetchone() == (None, 3)


async def test_patch_accepts_the_merge_patch_media_type(client: AsyncClient) -> None:
    await _create(client)

    response = await client.patch(
        "/products/ABC-1",
        content=b'{"price": "7.50"}',
        headers={"Content-Type": "application/merge-patch+json"},
    )

    assert response.status_code == 200
    assert response.json()["price"] == "7.50"


async def test_empty_patch_changes_nothing_and_returns_the_product(client: AsyncClient) -> None:
    created = await client.post("/products", json=product("ABC-1"))

    response = await client.patch("/products/ABC-1", json={})

    assert response.status_code == 200
    assert response.json() == created.json()
    assert response.headers["etag"] == created.headers["etag"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"sku": "ABC-2"}, "sku"),
        ({"quantity": 10}, "quantity"),
        ({"id": 99}, "id"),
        ({"created_at": "2020-01-01T00:00:00Z"}, "created_at"),
        ({"updated_at": "2020-01-01T00:00:00Z"}, "updated_at"),
        ({"colour": "blue"}, "colour"),
        ({"name": None}, "name"),
        ({"name": "  "}, "name"),
        ({"price": None}, "price"),
        ({"price": 1.005}, "price"),
        ({"price": "-1"}, "price"),
        ({"description": "d" * 2001}, "description"),
        ({"name": "ok", "quantity": 0}, "quantity"),
        ({"reorder_point": -1}, "reorder_point"),
        ({"reorder_point": 2_147_483_648}, "reorder_point"),
        ({"reorder_point": "3"}, "reorder_point"),
    ],
)
async def test_patch_refuses_fixed_unknown_and_invalid_fields_and_changes_nothing(
    client: AsyncClient, db: Connection[Any], patch: dict[str, Any], field: str
) -> None:
    created = await client.post("/products", json=product("ABC-1", quantity=3))

    response = await client.patch("/products/ABC-1", json=patch)

    body = assert_problem(response, 422, "validation_failed")
    assert field in {e["field"] for e in body["errors"]}
    current = await client.get("/products/ABC-1")
    assert current.json() == created.json()
    assert current.headers["etag"] == created.headers["etag"]


async def test_patch_of_quantity_points_to_adjustments(client: AsyncClient) -> None:
    await _create(client)

    response = await client.patch("/products/ABC-1", json={"quantity": 10})

    body = assert_problem(response, 422, "validation_failed")
    assert "adjustments" in body["errors"][0]["message"]


async def test_patch_of_a_missing_product_is_404(client: AsyncClient) -> None:
    assert_problem(
        await client.patch("/products/NOPE", json={"name": "x"}), 404, "product_not_found"
    )
    assert_problem(
        await client.patch("/products/no%20pe", json={"name": "x"}), 404, "product_not_found"
    )


async def test_patch_with_the_current_if_match_succeeds(client: AsyncClient) -> None:
    etag = (await client.post("/products", json=product("ABC-1"))).headers["etag"]

    response = await client.patch(
        "/products/ABC-1", json={"name": "Red"}, headers={"If-Match": f'"other", {etag}'}
    )

    assert response.status_code == 200
    assert response.headers["etag"] != etag


@pytest.mark.parametrize("if_match", ['"stale"', "W/{etag}", "garbage"])
async def test_patch_with_a_stale_if_match_is_412_and_changes_nothing(
    client: AsyncClient, if_match: str
) -> None:
    created = await client.post("/products", json=product("ABC-1"))
    etag = created.headers["etag"]

    response = await client.patch(
        "/products/ABC-1", json={"name": "Red"}, headers={"If-Match": if_match.format(etag=etag)}
    )

    assert_problem(response, 412, "precondition_failed")
    current = await client.get("/products/ABC-1")
    assert current.json() == created.json()
    assert current.headers["etag"] == etag


async def test_if_match_goes_stale_when_stock_moves(client: AsyncClient) -> None:
    etag = (await client.post("/products", json=product("ABC-1"))).headers["etag"]
    await adjust(client, "ABC-1", 1)

    response = await client.patch(
        "/products/ABC-1", json={"name": "Red"}, headers={"If-Match": etag}
    )

    assert_problem(response, 412, "precondition_failed")


async def test_empty_patch_still_honours_if_match(client: AsyncClient) -> None:
    await _create(client)

    response = await client.patch("/products/ABC-1", json={}, headers={"If-Match": '"stale"'})

    assert_problem(response, 412, "precondition_failed")


async def test_if_match_star_needs_only_an_existing_product(client: AsyncClient) -> None:
    await _create(client)

    ok = await client.patch("/products/ABC-1", json={"name": "Red"}, headers={"If-Match": "*"})
    missing = await client.patch("/products/NOPE", json={"name": "Red"}, headers={"If-Match": "*"})

    assert ok.status_code == 200
    assert_problem(missing, 404, "product_not_found")


# --- DELETE ------------------------------------------------------------------------------


async def test_delete_is_204_then_the_product_is_gone_and_its_movements_stay_in_the_ledger(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await _create(client, quantity=5)
    await adjust(client, "ABC-1", -2, "sold")
    assert db.execute("SELECT count(*) FROM stock_movements").fetchone() == (1,)

    response = await client.delete("/products/abc-1")

    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get("/products/ABC-1"), 404, "product_not_found")
    # The stock really moved: the ledger keeps the movement (docs/api.md, DELETE).
    assert db.execute("SELECT delta FROM stock_movements").fetchall() == [(-2,)]
    assert_problem(await client.delete("/products/ABC-1"), 404, "product_not_found")


async def test_a_deleted_sku_can_be_added_again_with_a_fresh_history(client: AsyncClient) -> None:
    await _create(client, quantity=5)
    await adjust(client, "ABC-1", -2, "sold")
    await client.delete("/products/ABC-1")

    await _create(client, quantity=1)

    assert (await client.get("/products/ABC-1/movements")).json() == []


async def test_delete_with_a_stale_if_match_is_412_then_with_the_current_one_204(
    client: AsyncClient,
) -> None:
    etag = (await client.post("/products", json=product("ABC-1"))).headers["etag"]
    newer = (await client.patch("/products/ABC-1", json={"name": "Red"})).headers["etag"]

    stale = await client.delete("/products/ABC-1", headers={"If-Match": etag})
    assert_problem(stale, 412, "precondition_failed")
    assert (await client.get("/products/ABC-1")).status_code == 200

    assert (await client.delete("/products/ABC-1", headers={"If-Match": newer})).status_code == 204
    assert (await client.get("/products/ABC-1")).status_code == 404


async def test_delete_of_a_missing_product_with_if_match_is_404(client: AsyncClient) -> None:
    response = await client.delete("/products/NOPE", headers={"If-Match": '"x"'})

    assert_problem(response, 404, "product_not_found")

"""The product endpoints against their contract (docs/api.md), over HTTP."""

from decimal import Decimal
from typing import Any

import pytest
from httpx import AsyncClient
from psycopg import Connection

from tests.helpers import JSON, RFC3339_UTC, assert_problem, product


async def test_create_returns_201_with_location_and_stored_product(
    client: AsyncClient, db: Connection[Any]
) -> None:
    response = await client.post(
        "/products", json=product("Mug-1", description="Blue", price=19.9, quantity=3)
    )

    assert response.status_code == 201
    assert response.headers["location"] == "/products/Mug-1"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {
        "id", "sku", "name", "description", "price", "quantity", "reserved", "available",
        "reorder_point",
        "created_at", "updated_at",
    }  # fmt: skip
    assert isinstance(body["id"], int)
    assert body["reorder_point"] is None
    assert (body["sku"], body["name"], body["description"]) == ("Mug-1", "Blue mug", "Blue")
    assert body["price"] == "19.90"
    assert (body["quantity"], body["reserved"], body["available"]) == (3, 0, 3)
    assert RFC3339_UTC.match(body["created_at"]) and RFC3339_UTC.match(body["updated_at"])
    row = db.execute("SELECT sku, price, quantity FROM products WHERE id = %s", (body["id"],))
    assert row.fetchone() == ("Mug-1", Decimal("19.90"), 3)
    # The starting quantity is the product's stock in MAIN.
    stock = db.execute(
        "SELECT location_id, quantity FROM product_stock WHERE product_id = %s", (body["id"],)
    )
    assert stock.fetchall() == [(0, 3)]


async def test_quantity_defaults_to_zero_and_description_to_null(client: AsyncClient) -> None:
    body = (await client.post("/products", json=product(price="0"))).json()

    assert (body["quantity"], body["description"], body["price"]) == (0, None, "0.00")


@pytest.mark.parametrize("point", [0, 7, 2_147_483_647])
async def test_reorder_point_is_stored_and_returned(
    client: AsyncClient, db: Connection[Any], point: int
) -> None:
    response = await client.post("/products", json=product(quantity=3, reorder_point=point))

    assert response.status_code == 201, response.text
    assert response.json()["reorder_point"] == point
    assert (await client.get("/products/ABC-1")).json()["reorder_point"] == point
    assert db.execute("SELECT reorder_point FROM products").fetchone() == (point,)


async def test_largest_price_is_kept_exactly(client: AsyncClient) -> None:
    response = await client.post("/products", json=product(price="9999999999.99"))

    assert response.status_code == 201
    assert response.json()["price"] == "9999999999.99"


async def test_list_returns_every_product_oldest_first(client: AsyncClient) -> None:
    assert (await client.get("/products")).json() == []
    created = [(await client.post("/products", json=product(f"S-{i}"))).json() for i in range(5)]

    response = await client.get("/products")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == created


async def test_list_streams_a_large_table_completely(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO products (sku, name, price) "
        "SELECT 'BULK-' || i, 'Name \"' || i || E'\\\\', i FROM generate_series(1, 5500) i"
    )

    response = await client.get("/products")

    rows = response.json()
    assert len(rows) == 5500
    assert [r["sku"] for r in rows[:2]] == ["BULK-1", "BULK-2"]
    assert rows[-1]["name"] == 'Name "5500\\'
    assert rows[-1]["price"] == "5500.00"


async def test_lookup_ignores_case(client: AsyncClient) -> None:
    created = (await client.post("/products", json=product("ABC-1"))).json()

    response = await client.get("/products/abc-1")

    assert response.status_code == 200
    assert response.json() == created


@pytest.mark.parametrize("sku", ["NOPE-1", "not a sku", "x" * 65, "-leading-dash"])
async def test_unknown_product_is_404(client: AsyncClient, sku: str) -> None:
    response = await client.get(f"/products/{sku}")

    body = assert_problem(response, 404, "product_not_found")
    assert sku in body["detail"]


async def test_duplicate_sku_is_409_and_writes_nothing(
    client: AsyncClient, db: Connection[Any]
) -> None:
    await client.post("/products", json=product("ABC-1"))

    response = await client.post("/products", json=product("ABC-1", name="Other"))

    body = assert_problem(response, 409, "duplicate_sku")
    assert "ABC-1" in body["detail"]
    assert db.execute("SELECT count(*) FROM products").fetchone() == (1,)


async def test_duplicate_sku_differing_in_case_is_409(client: AsyncClient) -> None:
    await client.post("/products", json=product("ABC-1"))

    response = await client.post("/products", json=product("abc-1"))

    assert_problem(response, 409, "duplicate_sku")
    assert (await client.get("/products/ABC-1")).json()["sku"] == "ABC-1"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "price": "1"}, "sku"),
        (product(price=None), "price"),
        (product(sku=""), "sku"),
        (product(sku="a b"), "sku"),
        (product(sku="-abc"), "sku"),
        (product(sku="A" * 65), "sku"),
        (product(name=""), "name"),
        (product(name="   "), "name"),
        (product(name="x" * 201), "name"),
        (product(name=5), "name"),
        (product(name="nul\x00byte"), "name"),
        (product(description="d" * 2001), "description"),
        (product(price="1.005"), "price"),
        (product(price=1.005), "price"),
        (product(price=0.30000000000000004), "price"),
        (product(price="-0.01"), "price"),
        (product(price="10000000000.00"), "price"),
        (product(price="NaN"), "price"),
        (product(price="Infinity"), "price"),
        (product(price="abc"), "price"),
        (product(price=True), "price"),
        (product(price=10**400), "price"),
        (product(quantity=-1), "quantity"),
        (product(quantity=2_147_483_648), "quantity"),
        (product(quantity="5"), "quantity"),
        (product(quantity=1.5), "quantity"),
        (product(quantity=True), "quantity"),
        (product(reorder_point=-1), "reorder_point"),
        (product(reorder_point=2_147_483_648), "reorder_point"),
        (product(reorder_point="5"), "reorder_point"),
        (product(reorder_point=2.5), "reorder_point"),
        (product(id=7), "id"),
        (product(created_at="2020-01-01T00:00:00Z"), "created_at"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    client: AsyncClient, db: Connection[Any], body: dict[str, Any], field: str
) -> None:
    response = await client.post("/products", json=body)

    problem = assert_problem(response, 422, "validation_failed")
    assert field in [e["field"] for e in problem["errors"]], problem
    assert all(e["message"] for e in problem["errors"])
    assert db.execute("SELECT count(*) FROM products").fetchone() == (0,)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"text"', b""])
async def test_body_that_is_not_a_json_object_is_422(client: AsyncClient, content: bytes) -> None:
    response = await client.post(
        "/products", content=content, headers={"content-type": "application/json"}
    )

    assert_problem(response, 422, "validation_failed")


async def test_check_raised_by_the_database_is_422_naming_the_constraint(
    client: AsyncClient, db: Connection[Any]
) -> None:
    # Tighten a rule in this test's own database only, past what the API checks itself,
    # so the refusal can only come from PostgreSQL.
    db.execute(
        "ALTER TABLE products DROP CONSTRAINT products_name_check, "
        "ADD CONSTRAINT products_name_check CHECK (name <> 'Forbidden')"
    )

    response = await client.post("/products", json=product(name="Forbidden"))

    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"][0]["field"] == "name"
    assert "products_name_check" in problem["errors"][0]["message"]
    assert "Forbidden" not in response.text  # the server's message is not echoed


async def test_unexpected_database_error_is_500_without_internals(
    client: AsyncClient, db: Connection[Any]
) -> None:
    db.execute("REVOKE SELECT ON products FROM inventory_rw")

    response = await client.get("/products/ABC-1")

    body = assert_problem(response, 500, "internal_error")
    assert set(body) == {"type", "title", "status", "code", "detail"}
    for leak in ("permission", "products", "SELECT", "Traceback", "inventory"):
        assert leak not in response.text


async def test_unknown_route_is_a_problem(client: AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not_found")


async def test_health_and_readiness(client: AsyncClient, db: Connection[Any]) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json() == {"status": "ready"}

    db.execute("DROP TABLE products CASCADE")

    assert (await client.get("/readyz")).status_code == 503


async def test_openapi_documents_the_product_endpoints(client: AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]

    assert {"post", "get"} <= set(paths["/products"])
    assert "404" in paths["/products/{sku}"]["get"]["responses"]


@pytest.mark.parametrize(
    "number",
    [
        "19.9900000000000001",  # a float would read 19.99 (issue: it was stored as 19.99)
        "1e999999",  # a float would overflow to infinity (issue: the error named `body`)
        "1e-999999",  # a float would underflow to 0.0
        "0.1000000000000000055511151231257827",  # the float nearest 0.1, written out
    ],
)
async def test_a_json_number_price_is_never_taken_through_a_float(
    client: AsyncClient, db: Connection[Any], number: str
) -> None:
    raw = '{"sku": "F-1", "name": "n", "price": ' + number + "}"

    response = await client.post("/products", content=raw, headers=JSON)

    body = assert_problem(response, 422, "validation_failed")
    assert [e["field"] for e in body["errors"]] == ["price"]
    assert db.execute("SELECT count(*) FROM products").fetchone() == (0,)


@pytest.mark.parametrize(
    ("number", "stored"), [("19.99", "19.99"), ("1e2", "100.00"), ("12.50", "12.50"), ("7", "7.00")]
)
async def test_json_number_prices_are_stored_exactly(
    client: AsyncClient, number: str, stored: str
) -> None:
    raw = '{"sku": "F-2", "name": "n", "price": ' + number + "}"

    response = await client.post("/products", content=raw, headers=JSON)

    assert response.status_code == 201, response.text
    assert response.json()["price"] == stored

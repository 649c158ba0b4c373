"""The OpenAPI document as tools read it: stable operation ids, tags, the server's own rules."""

import re
from typing import Any

import pytest
from fastapi.routing import APIRoute
from httpx import AsyncClient
from pydantic import ValidationError

from app.config import Settings
from app.main import create_app
from app.products.schemas import PRICE_TEXT_PATTERN, ProductCreate

CAMEL = re.compile(r"^[a-z]+(?:[A-Z][a-z]+)*$")


def _document(settings: Settings, **overrides: Any) -> dict[str, Any]:
    # Building the document opens nothing: no lifespan, no database.
    return create_app(settings.model_copy(update=overrides)).openapi()


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m, p): op for p, ops in document["paths"].items() for m, op in ops.items()}


def test_every_route_names_its_operation_id_itself(settings: Settings) -> None:
    # Generated clients name their functions after these: FastAPI's fallback
    # (create_product_products_post) changes whenever a path does.
    routes = [r for r in create_app(settings).routes if isinstance(r, APIRoute)]
    unnamed = [r.path for r in routes if r.include_in_schema and not r.operation_id]
    assert unnamed == []


def test_operation_ids_are_camel_case_unique_and_every_operation_has_one_tag(
    settings: Settings,
) -> None:
    operations = _operations(_document(settings))
    ids = [op["operationId"] for op in operations.values()]
    assert len(set(ids)) == len(ids)
    assert [i for i in ids if not CAMEL.match(i)] == []
    assert [key for key, op in operations.items() if len(op.get("tags", [])) != 1] == []
    by_id = {op["operationId"]: key for key, op in operations.items()}
    assert by_id["createProduct"] == ("post", "/products")
    assert by_id["getProduct"] == ("get", "/products/{sku}")
    assert by_id["adjustStock"] == ("post", "/products/{sku}/adjustments")
    assert by_id["importProducts"] == ("post", "/products/import")
    assert by_id["listChanges"] == ("get", "/changes")
    assert by_id["listDeliveries"] == ("get", "/webhooks/{id}/deliveries")


def test_an_open_server_documents_no_security(settings: Settings) -> None:
    # A tool reading `security` would send credentials this server does not want, and a
    # fuzzer would report every answer given without them as ignored authentication.
    document = _document(settings, allow_open=True)
    assert "securitySchemes" not in document["components"]
    for key, operation in _operations(document).items():
        assert "security" not in operation, key
        assert not {"401", "403"} & set(operation["responses"]), key


def test_an_open_server_kept_to_loopback_documents_its_403(settings: Settings) -> None:
    document = _document(settings)
    assert "securitySchemes" not in document["components"]
    assert "403" in _operations(document)[("get", "/products")]["responses"]


def test_every_operation_documents_405_with_allow(settings: Settings) -> None:
    for key, operation in _operations(_document(settings)).items():
        assert operation["responses"]["405"]["headers"]["Allow"]["required"], key


def test_json_body_strings_are_documented_without_nul(settings: Settings) -> None:
    schemas = _document(settings)["components"]["schemas"]
    assert schemas["ProductCreate"]["properties"]["description"]["anyOf"][0]["pattern"] == (
        r"^[^\x00]*$"
    )
    assert schemas["AdjustmentCreate"]["properties"]["note"]["anyOf"][0]["pattern"]
    assert "\x00" in schemas["ProductCreate"]["properties"]["name"]["pattern"] or (
        r"\x00" in schemas["ProductCreate"]["properties"]["name"]["pattern"]
    )


@pytest.mark.parametrize(
    ("price", "accepted"),
    [
        ("19.99", True),
        ("0", True),
        ("-0.00", True),
        ("0000000000009999999999.99", True),
        ("1.100", True),
        ("9999999999.99", True),
        ("10000000000", False),
        ("1.001", False),
        ("1.", False),
        (".5", False),
        ("-1", False),
        ("1e2", False),
        (" 1", False),
    ],
)
def test_the_documented_price_pattern_says_what_the_server_does(price: str, accepted: bool) -> None:
    documented = re.search(PRICE_TEXT_PATTERN, price) is not None
    try:
        ProductCreate(sku="P-1", name="n", price=price)  # type: ignore[arg-type]
        served = True
    except ValidationError:
        served = False
    assert (documented, served) == (accepted, accepted)


async def test_405_names_every_method_of_the_path(client: AsyncClient) -> None:
    response = await client.put("/products")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"
    response = await client.post("/products/ABC-1")
    assert response.headers["allow"] == "DELETE, GET, HEAD, PATCH"

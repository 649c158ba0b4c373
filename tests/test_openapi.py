"""The OpenAPI document as tools read it: stable operation ids, tags, the server's own rules."""

import re
from typing import Any

from fastapi.routing import APIRoute

from app.config import Settings
from app.main import create_app

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

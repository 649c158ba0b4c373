"""Small assertions shared by the HTTP tests."""

import re
from typing import Any

from httpx import Response

JSON = {"content-type": "application/json"}
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def product(sku: str = "ABC-1", **fields: Any) -> dict[str, Any]:
    """A valid POST /products body, with overrides."""
    return {"sku": sku, "name": "Blue mug", "price": "19.99", **fields}


def assert_problem(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == "about:blank"
    assert body["title"] and body["detail"]
    return body


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {token}"}

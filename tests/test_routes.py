"""How the app's routes are laid out: flat, guarded only when tokens are configured, and
strict about their query parameters."""

import re

from fastapi.routing import APIRoute, iter_route_contexts
from httpx import AsyncClient
from pydantic import SecretStr

from app.config import Settings
from app.deps import require_token
from app.main import create_app
from tests.helpers import assert_problem


def _guarded(route: APIRoute) -> bool:
    return any(d.dependency is require_token for d in route.dependencies)


def test_every_route_sits_on_the_app_itself() -> None:
    # An included router is a node FastAPI walks on every request; flat routes match in one
    # pass (app/routes/__init__.py).
    app = create_app(Settings(database_url="postgresql:///unused"))

    assert all(type(route).__name__ != "_IncludedRouter" for route in app.router.routes)
    assert {"/products/{sku}", "/changes", "/healthz"} <= {r.path for r in app.routes}


def test_the_token_check_runs_only_when_tokens_are_configured() -> None:
    open_app = create_app(Settings(database_url="postgresql:///unused"))
    locked_app = create_app(
        Settings(database_url="postgresql:///unused", api_tokens=SecretStr("t0ken-xyz"))
    )

    def lookup(app_routes: list) -> APIRoute:
        return next(
            r for r in app_routes if isinstance(r, APIRoute) and r.path == "/products/{sku}"
        )

    assert not _guarded(lookup(open_app.routes))
    assert _guarded(lookup(locked_app.routes))
    assert 401 in lookup(locked_app.routes).responses
    assert 401 not in lookup(open_app.routes).responses


async def test_every_route_refuses_a_query_parameter_it_does_not_take(
    settings: Settings, client: AsyncClient
) -> None:
    # Walks the real app's routes, so a route added later is held to it too: a misspelt
    # parameter (`?limt=10`) must never silently change or widen an answer.
    checked = []
    for context in iter_route_contexts(create_app(settings).routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        path = re.sub(r"\{[^}]+\}", "X-1", context.path or route.path)
        for method in sorted(context.methods or ()):
            content = {"headers": {"Content-Type": "text/csv"}} if "import" in path else {}
            response = await client.request(
                method,
                path,
                params={"limt": "10"},
                **({"json": {}} if method in {"POST", "PATCH"} and not content else content),
            )
            body = assert_problem(response, 422, "validation_failed")
            assert body["errors"] == [{"field": "limt", "message": "is not a known parameter"}]
            checked.append((method, context.path))
    assert ("GET", "/products/{sku}") in checked and ("POST", "/products/import") in checked
    assert ("GET", "/healthz") in checked and ("HEAD", "/products/{sku}") not in checked


async def test_a_lookup_with_a_parameter_it_does_not_take_is_422(client: AsyncClient) -> None:
    await client.post("/products", json={"sku": "ABC-1", "name": "Blue mug", "price": "1"})

    assert (await client.get("/products/ABC-1")).status_code == 200
    refused = await client.get("/products/ABC-1", params={"foo": "1"})

    body = assert_problem(refused, 422, "validation_failed")
    assert body["errors"] == [{"field": "foo", "message": "is not a known parameter"}]
    head = await client.head("/products/ABC-1", params={"foo": "1"})
    assert (head.status_code, head.content) == (422, b"")


async def test_declared_parameters_and_their_aliases_are_taken(client: AsyncClient) -> None:
    # `from` is the alias of a Python parameter; the names the document shows are the ones
    # taken.
    response = await client.get(
        "/reports/movements", params={"from": "2026-01-01T00:00:00Z", "bucket": "week"}
    )
    assert response.status_code == 200, response.text
    assert (await client.get("/products", params={"limit": "1", "q": "mug"})).status_code == 200


async def test_the_docs_pages_are_not_the_api_and_take_any_query(client: AsyncClient) -> None:
    assert (await client.get("/docs", params={"utm_source": "x"})).status_code == 200

"""/docs and /redoc work offline; the OpenAPI document describes every endpoint and problem."""

import re

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from httpx import AsyncClient

from app.config import Settings
from app.core.errors import PROBLEM_JSON
from app.main import create_app

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_loads_only_local_assets_and_they_are_served(
    client: AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    html = response.text

    # No CDN, no font service, no online validator: nothing outside this server.
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assets = {a or b for a, b in ASSET.findall(html)} - {"/openapi.json"}
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts, html
    for asset in assets:
        assert asset.startswith("/"), asset
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000, asset
    assert (await client.get("/openapi.json")).status_code == 200


async def test_swagger_ui_asks_no_online_validator(client: AsyncClient) -> None:
    assert '"validatorUrl": null' in (await client.get("/docs")).text


async def test_openapi_describes_every_route_and_its_problems(
    settings: Settings, client: AsyncClient
) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]

    routed = {
        (method.lower(), context.path)
        for context in iter_route_contexts(create_app(settings).routes)
        if isinstance(context.original_route, APIRoute) and context.original_route.include_in_schema
        for method in context.methods or ()
    }
    documented = {(m, p) for p, ops in paths.items() for m in ops}
    assert routed == documented
    assert {("get", "/metrics"), ("get", "/healthz"), ("get", "/readyz")} <= documented

    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "code", "detail"} <= set(problem["required"]) | {"type"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if status[0] in "45":
                    assert list(response["content"]) == [PROBLEM_JSON], (method, path, status)
            assert "500" in responses, (method, path)
            if "requestBody" in operation:
                assert {"413", "415", "422"} <= set(responses), (method, path)
    assert paths["/products"]["post"]["requestBody"]["content"]["application/json"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]

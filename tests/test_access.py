"""API.md "Access": bearer tokens on every /products route, read-only tokens, open mode."""

import hmac
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from httpx import ASGITransport, AsyncClient
from psycopg import Connection
from pydantic import SecretStr

from app import access
from app.config import Settings
from app.main import create_app
from app.observability import JsonFormatter
from tests.helpers import assert_problem, product

WRITE_1, WRITE_2, READ = "w-token-Zq81x", "w-token-second-7Hk", "r-token-Pl0p"


@pytest.fixture
def locked_app(settings: Settings) -> FastAPI:
    """An app started with two read-write tokens and one read-only token."""
    return create_app(
        settings.model_copy(
            update={
                "api_tokens": SecretStr(f"{WRITE_1}, {WRITE_2}"),
                "read_tokens": SecretStr(READ),
            }
        )
    )


@pytest.fixture
async def locked(locked_app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with (
        LifespanManager(locked_app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://test") as c,
    ):
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("nope"),
        bearer(WRITE_1 + "x"),
        bearer(WRITE_1[:-1]),
        {"Authorization": f"Basic {WRITE_1}"},
        {"Authorization": WRITE_1},
        {"Authorization": "Bearer "},
    ],
)
async def test_missing_or_wrong_token_is_401_with_www_authenticate(
    locked: AsyncClient, db: Connection[Any], headers: dict[str, str]
) -> None:
    for response in (
        await locked.get("/products", headers=headers),
        await locked.get("/products/ABC-1", headers=headers),
        await locked.post("/products", json=product(), headers=headers),
    ):
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert db.execute("SELECT count(*) FROM products").fetchone() == (0,)


@pytest.mark.parametrize("token", [WRITE_1, WRITE_2])
async def test_every_read_write_token_may_write_and_read(locked: AsyncClient, token: str) -> None:
    created = await locked.post("/products", json=product(), headers=bearer(token))
    assert created.status_code == 201

    found = await locked.get("/products/abc-1", headers=bearer(token))
    assert found.json() == created.json()


async def test_read_only_token_reads_but_a_write_is_403_and_writes_nothing(
    locked: AsyncClient, db: Connection[Any]
) -> None:
    await locked.post("/products", json=product("R-1"), headers=bearer(WRITE_1))

    assert (await locked.get("/products/R-1", headers=bearer(READ))).status_code == 200
    assert (await locked.get("/products", headers=bearer(READ))).status_code == 200
    response = await locked.post("/products", json=product("R-2"), headers=bearer(READ))

    assert_problem(response, 403, "forbidden")
    assert db.execute("SELECT count(*) FROM products").fetchone() == (1,)


async def test_every_products_route_refuses_a_request_without_token(
    locked_app: FastAPI, locked: AsyncClient
) -> None:
    # Walks the real app: a /products route added later without the token dependency fails.
    # Mounted apps too (their methods are unknown: GET stands for all).
    checked = []
    for context in iter_route_contexts(locked_app.routes):
        if not (context.path or "").startswith("/products"):
            continue
        path = re.sub(r"\{[^}]+\}", "X-1", context.path)
        for method in sorted(context.methods or {"GET"}):
            response = await locked.request(method, path)
            assert response.status_code == 401, (method, context.path, response.text)
            checked.append((method, context.path))
    assert ("GET", "/products/{sku}") in checked and ("POST", "/products") in checked


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json"]
)
async def test_operational_endpoints_stay_open(locked: AsyncClient, path: str) -> None:
    assert (await locked.get(path)).status_code == 200


async def test_each_token_is_compared_in_constant_time_against_all_tokens(
    locked: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", counting)
    # The first configured token matches at once; the others are still compared (no early
    # exit), and every comparison is between equal-length digests, never the raw tokens.
    assert (await locked.get("/products", headers=bearer(WRITE_1))).status_code == 200
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls)
    assert all(WRITE_1.encode() not in (a, b) for a, b in calls)


async def test_tokens_never_reach_the_logs(
    locked: AsyncClient, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    for token in (WRITE_1, WRITE_2, READ, "wrong-token-Xy"):
        await locked.get("/products", headers=bearer(token))
        await locked.post("/products", json=product(), headers=bearer(token))
    await locked.get("/products/ABC-1", headers={"Authorization": f"Basic {WRITE_1}"})

    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(r) for r in caplog.records) + capsys.readouterr().out
    assert '"logger": "app.access"' in logged  # the request lines were captured
    for secret in (WRITE_1, WRITE_2, READ, "wrong-token-Xy"):
        assert secret not in logged
    assert "authorization" not in logged.lower()


def test_tokens_are_not_in_the_settings_repr() -> None:
    settings = Settings(api_tokens=SecretStr(WRITE_1), read_tokens=SecretStr(READ))

    assert WRITE_1 not in repr(settings) and READ not in str(settings)


async def test_open_api_warns_at_start_up(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with LifespanManager(create_app(settings)):
        pass
    warnings = [r for r in caplog.records if r.name == "app.auth" and r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "no API tokens configured" in warnings[0].getMessage()


async def test_locked_api_does_not_warn(
    locked: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert not [r for r in caplog.records if r.name == "app.auth" and r.levelname == "WARNING"]


async def test_openapi_documents_the_bearer_scheme(locked: AsyncClient) -> None:
    document = (await locked.get("/openapi.json")).json()

    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/products"):
                assert operation["security"] == [{"bearerAuth": []}], (method, path)
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            else:
                assert "security" not in operation, (method, path)
    assert json.dumps(document).count("bearerAuth") > 1

"""docs/api.md "Access": bearer tokens on every /products route, read-only tokens, open mode."""

import hmac
import json
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from httpx import AsyncClient
from psycopg import Connection
from pydantic import SecretStr

from app.config import Settings
from app.core import access
from app.core.access import PROTECTED
from app.core.observability import JsonFormatter
from app.main import create_app
from tests.cluster import REPO, Cluster, free_port
from tests.conftest import LOCKED, READ, WRITE_1, WRITE_2, AppFactory
from tests.helpers import JSON as JSON_HEADERS
from tests.helpers import assert_problem, bearer, product
from tests.live import live_server


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


async def test_every_protected_route_refuses_a_request_without_token(
    settings: Settings, locked: AsyncClient
) -> None:
    # Walks the real app's routes: a route added later under a protected prefix without the
    # token dependency fails. Mounted apps too (their methods are unknown: GET stands for all).
    checked = []
    for context in iter_route_contexts(create_app(settings).routes):
        if not (context.path or "").startswith(PROTECTED):
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
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_app():
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
            if path.startswith(PROTECTED):
                assert operation["security"] == [{"bearerAuth": []}], (method, path)
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            else:
                assert "security" not in operation, (method, path)
    assert json.dumps(document).count("bearerAuth") > 1


@pytest.mark.parametrize(
    "variable", [{"api_tokens": SecretStr(" , ")}, {"read_tokens": SecretStr("")}]
)
def test_a_token_variable_without_a_token_is_a_start_up_error(
    settings: Settings, variable: dict[str, SecretStr]
) -> None:
    with pytest.raises(access.TokenConfigError, match="holds no token"):
        create_app(settings.model_copy(update=variable))


def test_the_service_does_not_start_with_an_empty_token_variable(tmp_path: Path) -> None:
    # As a user meets it: the environment variable set, the process refusing to start.
    done = subprocess.run(
        [sys.executable, "-c", "import app.main"],
        cwd=REPO,
        env={**os.environ, "INVENTORY_API_TOKENS": " , ", "DATABASE_URL": "postgresql://x@h/d"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "INVENTORY_API_TOKENS is set but holds no token" in done.stderr


async def test_idempotency_keys_belong_to_the_token_that_sent_them(
    locked: AsyncClient, db: Connection[Any]
) -> None:
    key = {"Idempotency-Key": "order-77"}
    first = await locked.post("/products", json=product("IK-1"), headers={**bearer(WRITE_1), **key})
    # The same key and body from another credential is another request: it runs (and meets
    # the product the first one made) instead of replaying the first one's answer.
    other = await locked.post("/products", json=product("IK-1"), headers={**bearer(WRITE_2), **key})
    # And a different body under that key from the other credential is not a "reuse".
    again = await locked.post("/products", json=product("IK-2"), headers={**bearer(WRITE_2), **key})
    replay = await locked.post(
        "/products", json=product("IK-1"), headers={**bearer(WRITE_1), **key}
    )

    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert_problem(other, 409, "duplicate_sku")
    assert "idempotent-replayed" not in other.headers
    assert_problem(again, 422, "idempotency_key_reused")  # WRITE_2's key now names IK-1's try
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert db.execute("SELECT count(*) FROM products").fetchone() == (1,)


def _outside_address() -> str | None:
    """A local address that is not loopback (the one a default route would use), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for UDP connect
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_an_open_api_refuses_a_non_loopback_bind_at_start_up(
    postgresql: Connection[Any], pg_server: Cluster
) -> None:
    # Several workers: the sockets exist before the app starts, so start-up itself fails.
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": pg_server.app_dsn(postgresql.info.dbname)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The workers refuse to start and the supervisor stops with them: nothing is served.
    # (uvicorn's supervisor itself exits 0 then; run.sh refuses such a start up front.)
    assert "Child process" in done.stderr and "failed to start" in done.stderr
    assert "INVENTORY_ALLOW_OPEN=1" in done.stderr + done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("allow_open", [False, True])
def test_an_open_api_answers_the_network_only_when_allowed(
    postgresql: Connection[Any], pg_server: Cluster, allow_open: bool
) -> None:
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    env = {"DATABASE_URL": pg_server.app_dsn(postgresql.info.dbname)}
    if allow_open:
        env["INVENTORY_ALLOW_OPEN"] = "1"
    # One process: it binds after start-up, so each request's local address is checked.
    with live_server(env, host="0.0.0.0") as server:
        port = server.url.rsplit(":", 1)[1]
        local = httpx.get(f"http://127.0.0.1:{port}/products")
        remote = httpx.get(f"http://{outside}:{port}/products")
        server.terminate_and_wait(timeout=20)

    assert local.status_code == 200
    if allow_open:
        assert remote.status_code == 200
    else:
        assert_problem(remote, 403, "forbidden")
        assert "INVENTORY_ALLOW_OPEN" in remote.json()["detail"]


# --- The token is checked before any body byte is read (issue 19, finding 1) ---------------

# A body that took half a second of a worker's CPU to parse: 350,000 empty objects.
HEAVY_BODY = b"[" + b",".join([b"{}"] * 349_525) + b"]"


async def _raw_post(
    app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, list[tuple[bytes, bytes]], bytes, int]:
    """POST `body` to the ASGI app; (status, headers, body, how many times it read)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], sent[0]["headers"], payload, reads


@pytest.mark.parametrize(
    ("path", "auth"),
    [
        ("/products", []),
        ("/products", [(b"authorization", b"Bearer wrong-token")]),
        ("/products/import", [(b"authorization", b"Basic " + WRITE_1.encode())]),
        ("/webhooks", []),
        ("/products/ABC-1/adjustments", [(b"authorization", b"Bearer " + READ.encode())]),
    ],
)
async def test_a_body_without_a_valid_token_is_refused_unread(
    make_app: AppFactory, db: Connection[Any], path: str, auth: list[tuple[bytes, bytes]]
) -> None:
    async with make_app(**LOCKED) as app:
        status, headers, body, reads = await _raw_post(app, path, HEAVY_BODY, auth)

    assert status in (401, 403)
    assert reads == 0  # not a byte of the body was asked for
    assert (b"connection", b"close") in headers
    assert json.loads(body)["code"] in ("unauthorized", "forbidden")
    assert db.execute("SELECT count(*) FROM products").fetchone() == (0,)


async def test_a_valid_token_still_gets_its_body_read(make_app: AppFactory) -> None:
    body = json.dumps(product()).encode()
    auth = [(b"authorization", f"Bearer {WRITE_1}".encode())]
    async with make_app(**LOCKED) as app:
        status, _, _, reads = await _raw_post(app, "/products", body, auth)

    assert (status, reads) == (201, 1)


async def test_a_json_body_with_too_many_values_is_422_before_it_is_parsed(
    locked: AsyncClient,
) -> None:
    started = time.monotonic()
    response = await locked.post(
        "/products", content=HEAVY_BODY, headers={**bearer(WRITE_1), **JSON_HEADERS}
    )

    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"][0]["field"] == "body"
    assert "more than 10000" in problem["errors"][0]["message"]
    assert time.monotonic() - started < 0.3  # parsing it took 0.45 s of CPU


# One client posting HEAVY_BODY with no token in a loop for `seconds`; prints its statuses.
_HAMMER = """
import sys, time, httpx
body = b"[" + b",".join([b"{}"] * 349_525) + b"]"
statuses = []
end = time.monotonic() + float(sys.argv[2])
with httpx.Client(timeout=10) as http:
    while time.monotonic() < end:
        try:
            statuses.append(http.post(sys.argv[1], content=body, headers={
                "content-type": "application/json"}).status_code)
        except httpx.TransportError:
            statuses.append(0)
print(" ".join(map(str, statuses)))
"""


@pytest.mark.slow
@pytest.mark.alone
def test_clients_without_a_token_posting_big_bodies_do_not_slow_a_worker(
    postgresql: Connection[Any], pg_server: Cluster
) -> None:
    # The finding as it was seen: two clients with no token post a 1 MiB JSON body in a
    # loop to one worker. Each body was parsed (~0.45 s of CPU) before its 401: a couple of
    # refusals a second, and /healthz on that worker stalled behind them (p50 968 ms then;
    # here, before the fix: 13 refusals in 8 s, /healthz up to 1.4 s).
    env = {
        "DATABASE_URL": pg_server.app_dsn(postgresql.info.dbname),
        "INVENTORY_API_TOKENS": WRITE_1,
        "INVENTORY_LOG_LEVEL": "WARNING",
    }
    with live_server(env) as server:
        hammers = [
            subprocess.Popen(
                [sys.executable, "-c", _HAMMER, f"{server.url}/products", "6"],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            time.sleep(1)
            timings = []
            with httpx.Client(timeout=10) as http:
                for _ in range(60):
                    started = time.perf_counter()
                    assert http.get(f"{server.url}/healthz").status_code == 200
                    timings.append(time.perf_counter() - started)
                    time.sleep(0.02)
            statuses = [s for h in hammers for s in h.communicate(timeout=60)[0].split()]
        finally:
            for hammer in hammers:
                hammer.kill()
            server.terminate_and_wait(timeout=20)

    # Refused from the headers alone: hundreds a second (loose: a shared machine's load).
    assert statuses.count("401") > 100, statuses
    assert set(statuses) <= {"401", "0"}
    assert statistics.quantiles(timings, n=10)[8] < 0.25, timings


# --- A token file, made on the first start (issue 19, finding 8) ------------------------------


async def test_a_first_start_makes_a_token_only_its_owner_may_read_and_says_where(
    make_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secrets" / "api-token"
    async with make_client(api_token_file=str(path)) as client:
        token = path.read_text().strip()
        denied = await client.post("/products", json=product())
        created = await client.post("/products", json=product(), headers=bearer(token))

    assert_problem(denied, 401, "unauthorized")
    assert created.status_code == 201
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert len(token) >= 40
    [said] = [r.getMessage() for r in caplog.records if "generated a read-write" in r.getMessage()]
    assert str(path) in said and token not in said
    # Started again, it reads the same token and makes none.
    caplog.clear()
    async with make_client(api_token_file=str(path)) as client:
        again = await client.get("/products", headers=bearer(token))
    assert again.status_code == 200
    assert path.read_text().strip() == token
    assert not [r for r in caplog.records if "generated a read-write" in r.getMessage()]


def test_processes_starting_together_share_one_generated_token(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda _: access.token_file(path).get_secret_value(), range(16)))

    assert len(set(seen)) == 1
    assert path.read_text().count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api-token"]  # no drafts left


def test_a_token_file_others_may_read_is_refused(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("some-token\n")
    path.chmod(0o644)

    with pytest.raises(access.TokenConfigError, match="others may read it"):
        create_app(settings.model_copy(update={"api_token_file": str(path)}))

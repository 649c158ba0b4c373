"""Webhooks: subscriptions, signed deliveries to a real local receiver, retries, many processes."""

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from psycopg import Connection
from pydantic import SecretStr
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Request, Response

from app.config import Settings
from tests.conftest import AppFactory, ClientFactory
from tests.helpers import RFC3339_UTC, age_changes, assert_problem, product
from tests.live import live_server

pytestmark = pytest.mark.background  # deliveries are a background loop

# Deliveries in these tests go to a receiver on 127.0.0.1: private addresses allowed, and
# quick retries so that a test sees several attempts.
LOCAL = {"webhook_allow_private": True, "webhook_retry_seconds": 0.1, "changes_poll_seconds": 0.1}


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    """A real HTTP server taking deliveries: answers `statuses` in turn (then 200), after
    `delay` seconds, and records every request."""

    server: HTTPServer
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    # Answer 200 with a body that never ends.
    endless: bool = False
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.received.append(
                Received(request.get_data(), dict(request.headers), time.monotonic())
            )
            status = self.statuses.pop(0) if self.statuses else 200
        if self.delay:
            time.sleep(self.delay)
        if self.endless:
            return Response(_forever(), status=200, direct_passthrough=True)
        return Response("ok", status=status, headers=self.headers)

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(r.body) for r in self.received]


def start_receiver(path: str = "/hook") -> Receiver:
    """A receiver of its own: a threaded server, so a slow answer holds up no other, and no
    request left over from another test reaches it."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    got = Receiver(server)
    server.expect_request(path, method="POST").respond_with_handler(got.handle)
    server.start()
    return got


def _forever() -> Iterator[bytes]:
    # Stops when the client has gone (the write fails) or after a minute.
    for _ in range(600):
        yield b"still talking\n"
        time.sleep(0.1)


async def changes_numbered(client: AsyncClient, count: int) -> None:
    for _ in range(250):
        if len((await client.get("/changes")).json()) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("events not numbered")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = start_receiver()
    yield got
    got.server.clear()
    got.server.stop()


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def subscribe(client: AsyncClient, url: str, events: list[str] | None = None) -> Any:
    response = await client.post("/webhooks", json={"url": url, "events": events or ["*"]})
    assert response.status_code == 201, response.text
    return response.json()


# --- Subscriptions -------------------------------------------------------------------------


async def test_a_subscription_shows_its_secret_once_and_never_again(
    make_client: ClientFactory,
) -> None:
    async with make_client(**LOCAL) as client:
        created = await client.post(
            "/webhooks",
            json={"url": "http://localhost:9/x", "events": ["product.updated"], "description": "d"},
        )
        listed = await client.get("/webhooks")
        one = await client.get(created.headers["location"])

    body = created.json()
    assert created.status_code == 201
    assert list(body) == ["id", "url", "events", "description", "secret", "created_at"]
    assert body["secret"].startswith("whsec_") and RFC3339_UTC.match(body["created_at"])
    assert created.headers["location"] == f"/webhooks/{body['id']}"
    shown = {k: v for k, v in body.items() if k != "secret"}
    assert listed.json() == [shown]
    assert one.json() == shown
    assert body["secret"] not in listed.text + one.text


async def test_the_same_idempotency_key_returns_the_same_subscription(
    make_client: ClientFactory,
) -> None:
    request = {"url": "http://localhost:9/x", "events": ["*"]}
    async with make_client(**LOCAL) as client:
        first = await client.post("/webhooks", json=request, headers={"Idempotency-Key": "k1"})
        again = await client.post("/webhooks", json=request, headers={"Idempotency-Key": "k1"})
        listed = await client.get("/webhooks")

    assert again.json() == first.json() and len(listed.json()) == 1


async def test_deleting_a_subscription_forgets_its_stored_replay_and_secret(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    # Issue 19, finding 7: the 201 with the secret stayed in idempotency_keys for 24 h.
    request = {"url": "http://localhost:9/x", "events": ["*"]}
    async with make_client(**LOCAL) as client:
        kept = await client.post("/webhooks", json=request, headers={"Idempotency-Key": "k0"})
        first = await client.post("/webhooks", json=request, headers={"Idempotency-Key": "k1"})
        await client.delete(f"/webhooks/{first.json()['id']}")
        again = await client.post("/webhooks", json=request, headers={"Idempotency-Key": "k1"})
    # psql deletes go the same way.
    db.execute("DELETE FROM webhooks WHERE id = %s", (kept.json()["id"],))

    stored = db.execute("SELECT key FROM idempotency_keys ORDER BY key").fetchall()
    secrets = db.execute(
        "SELECT count(*) FROM idempotency_keys "
        "WHERE position(%s IN convert_from(body, 'UTF8')) > 0",
        (first.json()["secret"],),
    ).fetchone()
    # The key is free again: a new subscription, with a new secret.
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
    assert stored == [("k1",)] and secrets == (0,)


async def test_a_101st_subscription_is_409_until_one_is_deleted(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO webhooks (url, events, secret) "
        "SELECT 'https://example.com/' || g, '{*}', 'whsec_MDEyMzQ1Njc4OWFiY2RlZg==' "
        "FROM generate_series(1, 100) g"
    )
    body = {"url": "http://localhost:9/x", "events": ["*"]}

    async with make_client(**LOCAL) as client:
        refused = await client.post("/webhooks", json=body)
        await client.delete(f"/webhooks/{(await client.get('/webhooks')).json()[0]['id']}")
        accepted = await client.post("/webhooks", json=body)

    assert_problem(refused, 409, "too_many_webhooks")
    assert accepted.status_code == 201


async def test_delete_unsubscribes_and_unknown_ids_are_404(make_client: ClientFactory) -> None:
    async with make_client(**LOCAL) as client:
        webhook = await subscribe(client, "http://localhost:9/x")
        deleted = await client.delete(f"/webhooks/{webhook['id']}")
        responses = [
            await client.get(f"/webhooks/{webhook['id']}"),
            await client.delete(f"/webhooks/{webhook['id']}"),
            await client.get(f"/webhooks/{webhook['id']}/deliveries"),
            await client.get("/webhooks/not-an-id"),
        ]

    assert deleted.status_code == 204
    for response in responses:
        assert_problem(response, 404, "webhook_not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/", "events": ["*"]}, "url"),
        ({"url": "https://", "events": ["*"]}, "url"),
        ({"url": "https://exa mple.com/", "events": ["*"]}, "url"),
        ({"url": "https://example.com/" + "x" * 2000, "events": ["*"]}, "url"),
        ({"url": "https://example.com/", "events": []}, "events"),
        ({"url": "https://example.com/", "events": ["product.moved"]}, "events.0"),
        ({"url": "https://example.com/", "events": ["*"], "secret": "mine"}, "secret"),
        ({"url": "https://example.com/", "events": ["*"], "description": "d" * 501}, "description"),
    ],
)
async def test_an_invalid_subscription_is_422_naming_the_field(
    client: AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/webhooks", json=body)

    problem = assert_problem(response, 422, "validation_failed")
    assert field in [e["field"] for e in problem["errors"]]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0/",
    ],
)
async def test_private_addresses_are_refused_without_the_opt_in(
    make_client: ClientFactory, url: str
) -> None:
    async with make_client() as client:
        refused = await client.post("/webhooks", json={"url": url, "events": ["*"]})
    async with make_client(webhook_allow_private=True) as client:
        allowed = await client.post("/webhooks", json={"url": url, "events": ["*"]})

    problem = assert_problem(refused, 422, "validation_failed")
    assert [e["field"] for e in problem["errors"]] == ["url"]
    assert allowed.status_code == 201


async def test_a_host_that_does_not_resolve_is_refused(client: AsyncClient) -> None:
    response = await client.post(
        "/webhooks", json={"url": "https://no-such-host.invalid/hook", "events": ["*"]}
    )

    assert_problem(response, 422, "validation_failed")


async def test_every_webhook_request_needs_a_read_write_token(make_client: ClientFactory) -> None:
    async with make_client(api_tokens=SecretStr("writer"), read_tokens=SecretStr("reader")) as c:
        reader = {"Authorization": "Bearer reader"}
        writer = {"Authorization": "Bearer writer"}
        as_reader = [
            await c.get("/webhooks", headers=reader),
            await c.get("/webhooks/1", headers=reader),
            await c.get("/webhooks/1/deliveries", headers=reader),
            await c.post(
                "/webhooks", json={"url": "https://example.com/", "events": ["*"]}, headers=reader
            ),
            await c.delete("/webhooks/1", headers=reader),
        ]
        anonymous = await c.get("/webhooks")
        as_writer = await c.get("/webhooks", headers=writer)

    for response in as_reader:
        assert_problem(response, 403, "forbidden")
    assert_problem(anonymous, 401, "unauthorized")
    assert as_writer.status_code == 200


# --- Deliveries ----------------------------------------------------------------------------


async def test_a_delivery_is_the_event_signed_with_the_subscriptions_secret(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    async with make_client(**LOCAL) as client:
        webhook = await subscribe(client, receiver.url())
        await client.post("/products", json=product("ABC-1"))
        await until(lambda: len(receiver.received) == 1)
        (event,) = (await client.get("/changes")).json()

    (delivery,) = receiver.received
    verified = Webhook(webhook["secret"]).verify(delivery.body, delivery.headers)
    assert verified == event
    assert delivery.headers["Webhook-Id"] == event["seq"]
    assert delivery.headers["Content-Type"] == "application/json"
    assert abs(int(delivery.headers["Webhook-Timestamp"]) - time.time()) < 60
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 43 + "=").verify(delivery.body, delivery.headers)


async def test_a_subscription_gets_the_events_after_it_was_created(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    async with make_client(**LOCAL) as client:
        await client.post("/products", json=product("BEFORE-1"))
        await changes_numbered(client, 1)
        await subscribe(client, receiver.url())
        await client.post("/products", json=product("AFTER-1"))
        await until(lambda: len(receiver.received) == 1)
        await asyncio.sleep(0.3)

    assert [e["sku"] for e in receiver.events()] == ["AFTER-1"]


async def test_a_redirect_is_an_answer_not_followed(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    elsewhere = start_receiver()
    try:
        receiver.statuses = [302]
        receiver.headers = {"Location": elsewhere.url()}
        async with make_client(**LOCAL) as client:
            webhook = await subscribe(client, receiver.url())
            await client.post("/products", json=product("ABC-1"))
            await until(lambda: len(receiver.received) == 2)  # retried, then 200
            await asyncio.sleep(0.2)
            log = (await client.get(f"/webhooks/{webhook['id']}/deliveries")).json()
    finally:
        elsewhere.server.stop()

    assert elsewhere.received == []
    assert [(a["status_code"], a["outcome"]) for a in log] == [(200, "delivered"), (302, "retry")]


async def test_an_answer_that_never_ends_does_not_hold_the_attempt(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    receiver.endless = True
    async with make_client(**LOCAL, webhook_timeout_seconds=2.0) as client:
        webhook = await subscribe(client, receiver.url())
        await client.post("/products", json=product("ABC-1"))
        for _ in range(250):
            log = (await client.get(f"/webhooks/{webhook['id']}/deliveries")).json()
            if log:
                break
            await asyncio.sleep(0.02)

    # Delivered on the status line: the body that followed was never waited for.
    assert [(a["status_code"], a["outcome"]) for a in log] == [(200, "delivered")]
    assert log[0]["duration_ms"] < 1000


async def test_only_the_subscribed_event_types_are_delivered(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    async with make_client(**LOCAL) as client:
        await subscribe(client, receiver.url(), ["product.deleted"])
        await client.post("/products", json=product("ABC-1"))
        await client.patch("/products/ABC-1", json={"name": "Red"})
        await client.delete("/products/ABC-1")
        await until(lambda: len(receiver.received) == 1)
        await asyncio.sleep(0.3)

    assert [e["type"] for e in receiver.events()] == ["product.deleted"]


async def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    async with make_client(**LOCAL) as client:
        webhook = await subscribe(client, receiver.url())
        await client.post("/products", json=product("ABC-1"))
        await until(lambda: len(receiver.received) == 3)
        await asyncio.sleep(0.2)
        log = (await client.get(f"/webhooks/{webhook['id']}/deliveries")).json()

    assert len({r.body for r in receiver.received}) == 1  # the same event each time
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in log] == [
        (3, 200, "delivered"),
        (2, 503, "retry"),
        (1, 500, "retry"),
    ]
    assert {a["seq"] for a in log} == {"1"} and all(a["error"] is None for a in log)
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # backoff: the retry delay, then doubled


async def test_no_answer_is_logged_with_an_error_and_no_status(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    receiver.delay = 1.0
    async with make_client(**LOCAL, webhook_timeout_seconds=0.3) as client:
        slow = await subscribe(client, receiver.url())
        dead = await subscribe(client, "http://127.0.0.1:9/hook")  # nothing listens
        await client.post("/products", json=product("ABC-1"))

        async def logged(webhook: Any) -> list[Any]:
            return (await client.get(f"/webhooks/{webhook['id']}/deliveries")).json()

        for _ in range(300):
            if await logged(slow) and await logged(dead):
                break
            await asyncio.sleep(0.02)
        timed_out, refused = (await logged(slow))[-1], (await logged(dead))[-1]

    assert timed_out["status_code"] is None and "no answer within 0.3 s" in timed_out["error"]
    assert refused["status_code"] is None and "Connect" in refused["error"]
    assert timed_out["outcome"] == refused["outcome"] == "retry"


async def test_a_retry_after_24_hours_from_the_event_gives_up_as_failed(
    make_client: ClientFactory, receiver: Receiver, db: Connection[Any]
) -> None:
    receiver.statuses = [500] * 100
    async with make_client(**LOCAL) as client:
        webhook = await subscribe(client, receiver.url())
        await client.post("/products", json=product("ABC-1"))
        await until(lambda: db.execute("SELECT count(*) FROM webhook_retries").fetchone() == (1,))
        # As if the day since the change had passed: the next failure is the last.
        db.execute("UPDATE webhook_retries SET give_up_at = now()")
        for _ in range(300):
            log = (await client.get(f"/webhooks/{webhook['id']}/deliveries")).json()
            if log and log[0]["outcome"] == "failed":
                break
            await asyncio.sleep(0.02)

    assert log[0]["outcome"] == "failed" and log[0]["status_code"] == 500
    assert db.execute("SELECT count(*) FROM webhook_retries").fetchone() == (0,)


async def test_an_event_older_than_24_hours_is_given_up_without_an_attempt(
    make_client: ClientFactory, receiver: Receiver, db: Connection[Any]
) -> None:
    """The day counts from the event, not from a first attempt: an event the service only
    gets to a day later (it was down) is given up, never sent, and holds nothing back."""
    async with make_client(**LOCAL) as client:
        webhook = await subscribe(client, receiver.url())
    db.execute("INSERT INTO products (sku, name, price) VALUES ('OLD-1', 'n', 1)")
    db.execute("SELECT product_changes_sequence(10000, true)")
    age_changes(db, 2)
    async with make_client(**LOCAL) as client:
        for _ in range(300):
            log = (await client.get(f"/webhooks/{webhook['id']}/deliveries")).json()
            if log:
                break
            await asyncio.sleep(0.02)

    assert receiver.received == []
    assert [(a["outcome"], a["status_code"]) for a in log] == [("failed", None)]
    assert "24 h" in log[0]["error"]
    assert db.execute("SELECT count(*) FROM webhook_retries").fetchone() == (0,)


async def test_deleted_webhooks_get_nothing_more(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    async with make_client(**LOCAL) as client:
        webhook = await subscribe(client, receiver.url())
        await client.delete(f"/webhooks/{webhook['id']}")
        await client.post("/products", json=product("ABC-1"))
        await asyncio.sleep(0.5)

    assert receiver.received == []


async def test_a_slow_receiver_slows_neither_requests_nor_other_receivers(
    make_client: ClientFactory, receiver: Receiver, request: pytest.FixtureRequest
) -> None:
    other = start_receiver()
    request.addfinalizer(other.server.stop)
    receiver.delay = 3.0  # every answer takes 3 s; the attempt gives up after 1 s
    settings = {**LOCAL, "webhook_timeout_seconds": 1.0, "webhook_per_receiver": 2}
    async with make_client(**settings) as client:
        await subscribe(client, receiver.url())
        await subscribe(client, other.url())
        started = time.monotonic()
        latencies = []
        for i in range(20):
            sent = time.monotonic()
            assert (await client.post("/products", json=product(f"P-{i}"))).status_code == 201
            latencies.append(time.monotonic() - sent)
        await until(lambda: len(other.received) == 20, within=5)

    # All 20 while the slow one still held its first two.
    assert max(r.at for r in other.received) - started < 3.0
    assert max(latencies) < 0.5


async def test_hanging_receivers_hold_up_neither_each_other_nor_a_healthy_one(
    make_client: ClientFactory, receiver: Receiver, request: pytest.FixtureRequest
) -> None:
    """The issue's case: 8 subscriptions whose receiver hangs and 1 healthy one. Each is
    served in a lane of its own, so the healthy one gets every event at once."""
    hanging = [start_receiver() for _ in range(8)]
    for other in hanging:
        other.delay = 30.0
        request.addfinalizer(other.server.stop)
    settings = {**LOCAL, "webhook_timeout_seconds": 30.0}
    async with make_client(**settings) as client:
        for other in hanging:
            await subscribe(client, other.url())
        await subscribe(client, receiver.url())
        started = time.monotonic()
        for i in range(20):
            assert (await client.post("/products", json=product(f"P-{i}"))).status_code == 201
        await until(lambda: len(receiver.received) == 20, within=5)
        took = time.monotonic() - started

    assert sorted(e["sku"] for e in receiver.events()) == sorted(f"P-{i}" for i in range(20))
    assert took < 5


@pytest.mark.slow
async def test_an_app_stopped_mid_backlog_delivers_the_rest_after_a_restart(
    make_app: AppFactory, make_client: ClientFactory, receiver: Receiver, db: Connection[Any]
) -> None:
    receiver.delay = 0.1
    settings = {**LOCAL, "webhook_per_receiver": 1, "webhook_concurrency": 1}
    async with make_client(**settings) as client:
        await subscribe(client, receiver.url())
        db.execute(
            "INSERT INTO products (sku, name, price) "
            "SELECT 'P-' || g, 'n', 1 FROM generate_series(1, 30) g"
        )
        await until(lambda: len(receiver.received) >= 5)
    stopped_at = len(receiver.received)
    assert stopped_at < 30
    async with make_app(**settings):
        await until(lambda: len({e["seq"] for e in receiver.events()}) == 30, within=20)

    seqs = Counter(e["seq"] for e in receiver.events())
    assert set(seqs) == {str(s) for s in range(1, 31)}
    # At least once: only the attempt in flight at the stop may have been repeated.
    assert sum(seqs.values()) - 30 <= 1
    assert db.execute("SELECT count(*) FROM webhook_retries").fetchone() == (0,)


@pytest.mark.slow
async def test_two_processes_on_one_database_deliver_each_event_once(
    db: Connection[Any], make_client: ClientFactory, settings: Settings
) -> None:
    """4 subscriptions, two processes each serving at most 2 at once: every event reaches
    every receiver once, and both processes share the work."""
    receivers = [start_receiver() for _ in range(4)]
    # This process's app and a uvicorn process of its own, on the same database.
    env = {
        "DATABASE_URL": settings.database_url or "",
        "INVENTORY_WEBHOOK_ALLOW_PRIVATE": "1",
        "INVENTORY_WEBHOOK_RETRY_SECONDS": "0.1",
        "INVENTORY_WEBHOOK_CONCURRENCY": "2",
        "INVENTORY_LOG_LEVEL": "WARNING",
    }
    try:
        for receiver in receivers:
            receiver.delay = 0.01
        with live_server(env) as other:
            async with make_client(**LOCAL, webhook_concurrency=2) as client:
                for receiver in receivers:
                    await subscribe(client, receiver.url())
                db.execute(
                    "INSERT INTO products (sku, name, price) "
                    "SELECT 'P-' || g, 'n', 1 FROM generate_series(1, 100) g"
                )
                await until(lambda: all(len(r.received) >= 100 for r in receivers), within=30)
                await asyncio.sleep(0.5)
                here = delivered((await client.get("/metrics")).text)
            async with httpx.AsyncClient(base_url=other.url) as direct:
                there = delivered((await direct.get("/metrics")).text)
    finally:
        for receiver in receivers:
            receiver.server.stop()

    for receiver in receivers:
        seqs = Counter(e["seq"] for e in receiver.events())
        assert len(seqs) == 100 and set(seqs.values()) == {1}
    attempts = db.execute(
        "SELECT count(*), count(DISTINCT (webhook_id, seq)) FROM webhook_attempts"
    ).fetchone()
    assert attempts == (400, 400)
    # Both processes took part (each counts its own attempts).
    assert here > 0 and there > 0 and here + there == 400


def delivered(metrics: str) -> int:
    for line in metrics.splitlines():
        if line.startswith('inventory_webhook_deliveries_total{outcome="delivered"}'):
            return int(float(line.split()[-1]))
    return 0


async def test_metrics_count_deliveries_by_outcome(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    async with make_client(**LOCAL) as client:
        await subscribe(client, receiver.url())
        await client.post("/products", json=product("ABC-1"))
        await until(lambda: len(receiver.received) == 2)
        await asyncio.sleep(0.2)
        text = (await client.get("/metrics")).text

    assert 'inventory_webhook_deliveries_total{outcome="retry"} 1.0' in text
    assert 'inventory_webhook_deliveries_total{outcome="delivered"} 1.0' in text
    assert "inventory_webhook_oldest_undelivered_seconds" in text


async def test_an_address_refused_at_delivery_is_never_contacted(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    # Registered while private addresses were allowed; delivered by a process where they
    # are not (or the name now resolves inside): the attempt fails without a connection.
    async with make_client(**LOCAL) as client:
        await subscribe(client, receiver.url())
    async with make_client(**{**LOCAL, "webhook_allow_private": False}) as client:
        webhook = (await client.get("/webhooks")).json()[0]
        await client.post("/products", json=product("ABC-1"))
        for _ in range(300):
            log = (await client.get(f"/webhooks/{webhook['id']}/deliveries")).json()
            if log:
                break
            await asyncio.sleep(0.02)

    assert receiver.received == []
    assert log[0]["status_code"] is None and "not sent" in log[0]["error"]

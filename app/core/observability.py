"""What operators see: Prometheus metrics, one JSON log line per request, X-Request-ID."""

import asyncio
import json
import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.http.matching import matching

access_log = logging.getLogger("app.access")

# Where the middleware leaves the request id for the rest of the app (errors.py reads it).
REQUEST_ID_KEY = "inventory.request_id"
# The route label of requests that matched no route: raw paths would make label values (and
# so series) unbounded.
UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# ---------------------------------------------------------------------------------------------
# Logs


# The attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        attributes = vars(record)
        for key in attributes.keys() - _RECORD_ATTRS:
            if not key.startswith("_"):
                entry[key] = attributes[key]
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    # Looks sys.stdout up on every line, so a replaced stdout (a test's capture) is honoured.
    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def configure_logging(level: str) -> None:
    """JSON lines on stdout for every logger that propagates to the root (all but uvicorn's).

    Idempotent: building the app again (tests do) does not add a second handler.
    """
    root = logging.getLogger()
    if not any(isinstance(h, _StdoutHandler) for h in root.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    logging.getLogger("app").setLevel(level)
    # The logging HOWTO's "Optimization": our lines carry no source file, thread or process
    # fields, so do not collect them; a quarter of the cost of a request's log line goes away.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Connection failures during an outage are worth a line; their messages carry host and
    # port, never the password.
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# Metrics


class PoolCollector(Collector):
    """The pool's gauges, read from pool.get_stats() at scrape time (nothing to keep in sync)."""

    def __init__(self) -> None:
        self.pool: AsyncConnectionPool[Any] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.pool is None:
            return
        stats = self.pool.get_stats()
        for name, key, text in (
            ("inventory_db_pool_size", "pool_size", "Connections the pool holds (busy or idle)."),
            ("inventory_db_pool_max", "pool_max", "The most connections the pool may hold."),
            ("inventory_db_pool_available", "pool_available", "Idle connections, ready now."),
            ("inventory_db_pool_waiting", "requests_waiting", "Requests queued for a connection."),
        ):
            yield GaugeMetricFamily(name, text, value=stats.get(key, 0))
        yield CounterMetricFamily(
            "inventory_db_pool_timeouts",
            "Requests that got no connection within the pool timeout (answered 503).",
            value=stats.get("requests_errors", 0),
        )


class DeliveryBacklog(Collector):
    """The age of the oldest webhook delivery still to make, as the delivery worker last read
    it from the queue (every worker reads the same queue, so any worker's value will do)."""

    def __init__(self) -> None:
        self.seconds: float | None = None

    def collect(self) -> Iterator[Metric]:
        if self.seconds is not None:
            yield GaugeMetricFamily(
                "inventory_webhook_oldest_undelivered_seconds",
                "Age of the oldest webhook delivery not yet made (0: none waiting).",
                value=self.seconds,
            )


class ReplicaCollector(Collector):
    """The read replica as this process's probe last saw it (app.core.reads)."""

    def __init__(self) -> None:
        self.replica: Any = None

    def collect(self) -> Iterator[Metric]:
        replica = self.replica
        if replica is None:
            return
        yield GaugeMetricFamily(
            "inventory_db_replica_in_use",
            "1 while reads go to the read replica (it answers and is within the lag limit).",
            value=1 if replica.usable else 0,
        )
        yield GaugeMetricFamily(
            "inventory_db_replica_up",
            "1 while the read replica answers the probe as a replica.",
            value=1 if replica.in_recovery else 0,
        )
        if replica.lag is not None:
            yield GaugeMetricFamily(
                "inventory_db_replica_lag_seconds",
                "How far behind the primary the read replica is (an upper bound, within a probe).",
                value=replica.lag,
            )


# Request latencies of an API answering from an index: most land well under 50 ms.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The app's metrics, in a registry of its own (so several apps in one process never clash).

    With PROMETHEUS_MULTIPROC_DIR set (run.sh and the Dockerfile set it for several uvicorn
    workers), prometheus_client keeps every worker's counts in files there and a scrape of any
    worker sums them all; the pool gauges are those of the worker that answered.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "inventory_http_requests",
            "HTTP requests answered, by method, route template and status.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "inventory_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.db_errors = Counter(
            "inventory_db_errors",
            "Database errors by SQLSTATE class (first two characters; pool_timeout, none).",
            ("sqlstate_class",),
            registry=self.registry,
        )
        self.deliveries = Counter(
            "inventory_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retry (another attempt follows), "
            "failed (given up).",
            ("outcome",),
            registry=self.registry,
        )
        # livesum: with several workers, the streams open in the live ones.
        self.streams = Gauge(
            "inventory_change_streams_open",
            "GET /changes/stream responses open now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.reads = Counter(
            "inventory_db_reads",
            "Exports, pages, change log pages and reports, by where they ran: replica, primary.",
            ("target",),
            registry=self.registry,
        )
        self.pool = PoolCollector()
        self.registry.register(self.pool)
        self.replica = ReplicaCollector()
        self.registry.register(self.replica)
        self.backlog = DeliveryBacklog()
        self.registry.register(self.backlog)
        # labels() takes a lock and builds a key per call: cache the children per label set.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(*key))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_read(self, target: str) -> None:
        self.reads.labels(target).inc()

    def count_delivery(self, outcome: str) -> None:
        self.deliveries.labels(outcome).inc()

    def set_backlog(self, seconds: float) -> None:
        self.backlog.seconds = seconds

    def exposition(self) -> bytes:
        """The Prometheus text format of everything this app (or all its workers) counted."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self.pool)
            registry.register(self.backlog)
            registry.register(self.replica)
            return generate_latest(registry)
        return generate_latest(self.registry)


# ---------------------------------------------------------------------------------------------
# The middleware


def _new_request_id() -> bytes:
    """A random (version 4) UUID as 32 hex digits.

    From the random module, not uuid.uuid4(): that reads os.urandom, a system call per request
    on the hot path, and a request id needs to be unique, not unguessable. The module's own
    generator is reseeded in a forked child, so forked workers do not repeat each other.
    """
    bits = random.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)
    return b"%032x" % (bits | (0x4000 << 64) | (0x8000 << 48))


# Up to 128 printable ASCII characters: safe in a header, a log line and a metric exemplar.
# A regex, not a generator over the bytes: it runs on every request that sends an id.
_valid_request_id = re.compile(rb"[\x20-\x7e]{1,128}").fullmatch


class _RouteTemplates:
    """Route templates for metric labels, from the app's (flat) routes."""

    def __init__(self, routes: list[BaseRoute]) -> None:
        self._routes = routes

    def __call__(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path", None) or UNMATCHED
        # Answered before routing (BodyGuard's 413/415/422) or by no route at all (404):
        # match the paths the way the router would, so a refused POST counts under its route.
        found = matching(self._routes, scope["path"])
        return found[0].path if found else UNMATCHED


class ObserveRequests:
    """Pure ASGI middleware: request id, one access log line, and the request metrics.

    Pure ASGI rather than BaseHTTPMiddleware: no extra task per request, and streamed
    responses pass through untouched (only the X-Request-ID header is added).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_template = _RouteTemplates(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        request_id = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value
                break
        if not _valid_request_id(request_id):
            request_id = _new_request_id()
        scope[REQUEST_ID_KEY] = rid = request_id.decode()
        id_header = (b"x-request-id", request_id)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or 499  # the client went away before an answer (nginx's code)
            raise
        except BaseException:
            status = status or 500  # ServerErrorMiddleware, outside us, answers 500
            raise
        finally:
            seconds = time.perf_counter() - started_at
            route = self.route_template(scope)
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.observe(method, route, status, seconds)
            if access_log.isEnabledFor(logging.INFO):  # INVENTORY_LOG_LEVEL=WARNING: no lines
                access_log.info(
                    "request",
                    extra={
                        "method": method,
                        "route": route,
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "request_id": rid,
                    },
                )

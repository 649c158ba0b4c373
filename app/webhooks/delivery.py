"""Webhook delivery, inside every service process: every subscription with work is served
in a lane of its own.

A process leases the subscriptions that have work (schema.sql: webhook_lease; SKIP LOCKED,
the least recently served first), up to `webhook_concurrency` at once, and serves each in
its own lane: batches of its due retries and next events, up to `webhook_per_receiver`
attempts at once, each batch recorded (and the lease renewed) in one transaction. So a
receiver that hangs, fails or is slow holds its own lane only: every other subscription has
one of its own (the database allows 100 subscriptions, the default lanes per process). A
lane with nothing left hands its subscription back. Lanes start when events are numbered
(the LISTEN wake-up) and when a retry or a lease falls due; nothing polls.

At least once: a process that dies mid-batch leaves its subscription to another when its
lease runs out, and the unrecorded attempts are made again. Every attempt is bounded by
`webhook_timeout_seconds`, from resolving the host to the last header of the answer (the
answer's body is not read). The 24 hours after which an event is given up count from the
event.
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import anyio
import httpx
from anyio.abc import TaskGroup

from app.config import Settings
from app.database import Database
from app.webhooks import queries, ssrf
from app.webhooks.queries import Leased, Outcome, Work
from app.webhooks.signing import signed_headers

logger = logging.getLogger("app.webhooks")

# docs/api.md: retried for at least 24 h after the event, then given up.
GIVE_UP_AFTER = timedelta(hours=24)
# A lease outlasts a batch (its attempts run side by side, each within the timeout) by this.
LEASE_MARGIN_SECONDS = 30.0
# Events looked at per batch for a subscription that takes only some types.
SCAN_EVENTS = 500
USER_AGENT = "inventory-api-webhooks/3"
# How often, at most, the age of the oldest undelivered event is read for /metrics.
BACKLOG_EVERY_SECONDS = 5.0
# A lane's lease handed back on shutdown: this long at most.
RELEASE_SECONDS = 1.0
# The last retry is due at the deadline itself: it is still made this late. An attempt due
# any later (the service was down) is not made: the event is given up.
LATE_GRACE = timedelta(minutes=1)


class Deliveries:
    """Runs until cancelled; `wake()` when events were numbered."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        count: Callable[[str], None],
        backlog: Callable[[float], None],
    ) -> None:
        self._db = db
        self._timeout = settings.webhook_timeout_seconds
        self._retry_seconds = settings.webhook_retry_seconds
        self._lanes = settings.webhook_concurrency
        self._per_receiver = settings.webhook_per_receiver
        self._allow_private = settings.webhook_allow_private
        self._lease_seconds = self._timeout + LEASE_MARGIN_SECONDS
        self._count = count
        self._backlog = backlog
        self._backlog_read = -math.inf
        self._backlog_last = 0.0
        self._wanted = asyncio.Event()
        self._serving: dict[int, Leased] = {}
        # Its own: deliveries and registrations never wait on each other's lookups.
        self._resolver = ssrf.Resolver()

    def wake(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        # No redirects (a 3xx is an answer, not an invitation), no proxy from the environment.
        async with (
            httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout),
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_connections=self._lanes * self._per_receiver),
            ) as client,
            anyio.create_task_group() as lanes,
        ):
            try:
                await self._serve(client, lanes)
            finally:
                await self._resolver.close()

    async def _serve(self, client: httpx.AsyncClient, lanes: TaskGroup) -> None:
        while True:
            self._wanted.clear()
            free = self._lanes - len(self._serving)
            if free > 0:
                leased = await queries.lease(
                    self._db, max_webhooks=free, lease_seconds=self._lease_seconds
                )
                for subscription in leased:
                    self._serving[subscription.id] = subscription
                    lanes.start_soon(self._lane, client, subscription)
            await self._measure_backlog()
            # Without a new event, look again when a retry or a lease falls due.
            due = await queries.seconds_to_next_due(self._db)
            with anyio.move_on_after(math.inf if due is None else max(due, 0.05)):
                await self._wanted.wait()

    async def _lane(self, client: httpx.AsyncClient, leased: Leased) -> None:
        try:
            while batch := await queries.work(
                self._db,
                leased,
                max_attempts=self._per_receiver,
                max_scan=SCAN_EVENTS,
                give_up_after=GIVE_UP_AFTER,
            ):
                outcomes: list[Outcome] = []
                async with anyio.create_task_group() as attempts:
                    for work in batch:
                        if work.event is not None:
                            attempts.start_soon(self._attempt, client, leased, work, outcomes)
                fresh = [w.seq for w in batch if w.fresh]
                recorded = await queries.record(
                    self._db,
                    leased,
                    outcomes,
                    scanned=max(fresh, default=0),
                    lease_seconds=self._lease_seconds,
                    retry_seconds=self._retry_seconds,
                )
                if recorded is None:
                    logger.info("webhook %d was no longer this process's to serve", leased.id)
                    return
                for outcome in recorded:
                    self._count(outcome)
        finally:
            # Shielded and bounded: on shutdown, another process need not wait for the lease.
            with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_SECONDS):
                await queries.release(self._db, leased)
            del self._serving[leased.id]
            self.wake()

    async def _attempt(
        self, client: httpx.AsyncClient, leased: Leased, work: Work, outcomes: list[Outcome]
    ) -> None:
        assert work.event is not None
        if datetime.now(UTC) >= work.give_up_at + LATE_GRACE:
            outcomes.append(Outcome(work, None, "not attempted: 24 h after the event", 0))
            return
        started = time.monotonic()
        status_code, error = await self._post(client, leased, work.seq, work.event)
        duration_ms = round((time.monotonic() - started) * 1000)
        outcomes.append(Outcome(work, status_code, error, duration_ms))

    async def _post(
        self, client: httpx.AsyncClient, leased: Leased, seq: int, event: str
    ) -> tuple[int | None, str | None]:
        """One attempt: the answer's status code, or None and what went wrong."""
        try:
            with anyio.fail_after(self._timeout):
                targets = await ssrf.resolve(
                    leased.url, allow_private=self._allow_private, resolver=self._resolver
                )
                headers = {
                    **signed_headers(leased.secret, seq, event, datetime.now(UTC)),
                    "content-type": "application/json",
                    "user-agent": USER_AGENT,
                }
                # The host's addresses in turn until one takes the connection (a name may
                # have an IPv6 address the receiver does not listen on).
                for target in targets[:-1]:
                    with suppress(httpx.ConnectError):
                        return await _send(client, target, headers, event)
                return await _send(client, targets[-1], headers, event)
        except (TimeoutError, httpx.TimeoutException):
            return None, f"no answer within {self._timeout:g} s"
        except ssrf.AddressRefused as exc:
            return None, f"not sent: {exc}"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:1000]

    async def _measure_backlog(self) -> None:
        # Only while deliveries happen or wait: an idle service asks nothing.
        if not self._serving and self._backlog_last == 0:
            return
        if time.monotonic() - self._backlog_read < BACKLOG_EVERY_SECONDS:
            return
        self._backlog_read = time.monotonic()
        self._backlog_last = await queries.backlog_seconds(self._db)
        self._backlog(self._backlog_last)


async def _send(
    client: httpx.AsyncClient, target: ssrf.Target, headers: dict[str, str], event: str
) -> tuple[int, None]:
    async with client.stream(
        "POST",
        target.url,
        content=event.encode(),
        headers={**target.headers, **headers},
        extensions=target.extensions,
    ) as response:
        return response.status_code, None

"""Webhook delivery, inside every service process: claim due deliveries, POST them signed.

Deliveries are queued by the sequencer in the database (schema.sql), so any process on any
host may make an attempt and a crash loses none: a claim is a lease in the queue row. Each
process runs at most `webhook_concurrency` attempts at once and at most
`webhook_per_receiver` for one subscription, so a slow or dead receiver holds a few slots,
never all of them, and no request ever waits for a delivery. Every attempt is bounded by
`webhook_timeout_seconds`, from resolving the host to the last header of the answer (the
answer's body is not read). Signatures follow the Standard Webhooks specification.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import psycopg
from psycopg_pool import PoolTimeout
from standardwebhooks import Webhook

from app import ssrf
from app.config import Settings
from app.database import Database
from app.queries import webhooks
from app.queries.webhooks import Claimed

logger = logging.getLogger("app.delivery")

# API.md: retried for at least 24 h, then given up.
GIVE_UP_AFTER = timedelta(hours=24)
# A claim outlasts the attempt's timeout by this much before another process may retry it.
LEASE_MARGIN_SECONDS = 30.0
# On shutdown, attempts in flight get this long to finish; the rest are handed back.
SHUTDOWN_GRACE_SECONDS = 2.0
USER_AGENT = "inventory-api-webhooks/2"
# How often the age of the oldest undelivered event is read for /metrics.
BACKLOG_EVERY_SECONDS = 5.0


def signed_headers(claimed: Claimed, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers: webhook-id (the event's seq), -timestamp, -signature."""
    signature = Webhook(claimed.secret).sign(
        msg_id=str(claimed.seq), timestamp=now, data=claimed.event
    )
    return {
        "webhook-id": str(claimed.seq),
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


class Deliverer:
    """Runs until cancelled; `wake()` when deliveries may have been queued."""

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
        self._concurrency = settings.webhook_concurrency
        self._per_receiver = settings.webhook_per_receiver
        self._allow_private = settings.webhook_allow_private
        self._poll = settings.changes_poll_seconds
        self._count = count
        self._backlog = backlog
        self._backlog_read = 0.0
        self._wanted = asyncio.Event()
        self._in_flight: Counter[int] = Counter()
        self._attempts: set[asyncio.Task[None]] = set()
        # Its own: deliveries and registrations never wait on each other's lookups.
        self._resolver = ssrf.Resolver()
        # No redirects (a 3xx is an answer, not an invitation), no proxy from the environment.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=self._concurrency),
        )

    def wake(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        failing = False
        try:
            while True:
                free = self._concurrency - len(self._attempts)
                claimed: list[Claimed] = []
                if free > 0:
                    try:
                        claimed = await webhooks.claim(
                            self._db,
                            max_rows=free,
                            per_webhook=self._per_receiver,
                            skip=[w for w, n in self._in_flight.items() if n >= self._per_receiver],
                            lease_seconds=self._timeout + LEASE_MARGIN_SECONDS,
                        )
                        failing = False
                    except (psycopg.Error, PoolTimeout) as exc:
                        if not failing:
                            logger.warning("could not claim webhook deliveries: %s", exc)
                        failing = True
                for delivery in claimed:
                    self._start(delivery)
                await self._measure_backlog()
                if claimed and len(claimed) == free:
                    continue  # there may be more due
                with anyio.move_on_after(self._poll):
                    await self._wanted.wait()
                self._wanted.clear()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop()

    async def _measure_backlog(self) -> None:
        if time.monotonic() - self._backlog_read < BACKLOG_EVERY_SECONDS:
            return
        self._backlog_read = time.monotonic()
        with suppress(psycopg.Error, PoolTimeout):  # an outage: the claim has logged it
            self._backlog(await webhooks.oldest_undelivered_seconds(self._db))

    def _start(self, claimed: Claimed) -> None:
        self._in_flight[claimed.webhook_id] += 1
        task = asyncio.create_task(self._attempt(claimed), name=f"webhook-{claimed.seq}")
        self._attempts.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._attempts.discard(task)
            self._in_flight[claimed.webhook_id] -= 1
            if self._in_flight[claimed.webhook_id] <= 0:
                del self._in_flight[claimed.webhook_id]
            self._wanted.set()  # a slot is free

        task.add_done_callback(done)

    async def _attempt(self, claimed: Claimed) -> None:
        started = time.monotonic()
        try:
            status_code, error = await self._post(claimed)
        except asyncio.CancelledError:
            # Shutdown: hand the delivery back so another process (or the next start) does
            # not wait for the lease. It may have arrived: at least once, not exactly once.
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await webhooks.release(self._db, claimed)
            raise
        duration_ms = round((time.monotonic() - started) * 1000)
        try:
            outcome = await webhooks.finish(
                self._db,
                claimed,
                status_code=status_code,
                error=error,
                duration_ms=duration_ms,
                retry_seconds=self._retry_seconds,
                give_up_after=GIVE_UP_AFTER,
            )
        except (psycopg.Error, PoolTimeout) as exc:
            # Not recorded: the lease runs out and the delivery is attempted again.
            logger.warning("could not record webhook attempt for seq %d: %s", claimed.seq, exc)
            return
        if outcome is None:
            logger.info("webhook attempt for seq %d was no longer ours to record", claimed.seq)
            return
        self._count(outcome)

    async def _post(self, claimed: Claimed) -> tuple[int | None, str | None]:
        """One attempt: the answer's status code, or None and what went wrong."""
        try:
            with anyio.fail_after(self._timeout):
                targets = await ssrf.resolve(
                    claimed.url, allow_private=self._allow_private, resolver=self._resolver
                )
                headers = {
                    **signed_headers(claimed, datetime.now(UTC)),
                    "content-type": "application/json",
                    "user-agent": USER_AGENT,
                }
                # The host's addresses in turn until one takes the connection (a name may
                # have an IPv6 address the receiver does not listen on).
                for target in targets[:-1]:
                    with suppress(httpx.ConnectError):
                        return await self._send(target, headers, claimed.event)
                return await self._send(targets[-1], headers, claimed.event)
        except (TimeoutError, httpx.TimeoutException):
            return None, f"no answer within {self._timeout:g} s"
        except ssrf.AddressRefused as exc:
            return None, f"not sent: {exc}"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:1000]

    async def _send(
        self, target: ssrf.Target, headers: dict[str, str], event: str
    ) -> tuple[int, None]:
        async with self._client.stream(
            "POST",
            target.url,
            content=event.encode(),
            headers={**target.headers, **headers},
            extensions=target.extensions,
        ) as response:
            return response.status_code, None

    async def _stop(self) -> None:
        if self._attempts:
            await asyncio.wait(self._attempts, timeout=SHUTDOWN_GRACE_SECONDS)
        for task in self._attempts:
            task.cancel()
        if self._attempts:
            await asyncio.wait(self._attempts)
        await self._client.aclose()
        await self._resolver.close()

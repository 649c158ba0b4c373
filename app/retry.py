"""Bounded retries of a unit of work that lost a serialization or deadlock race."""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

logger = logging.getLogger("app.retry")

T = TypeVar("T")

# serialization_failure, deadlock_detected: PostgreSQL rolled the transaction back and says
# that running it again may well succeed. Nothing else is retried here.
RETRYABLE = frozenset({"40001", "40P01"})
# Full jitter (sleep uniformly in [0, base * 2^n)) keeps retrying requests from colliding
# again in lock step; a handful of milliseconds is plenty for row-level conflicts.
BASE_DELAY = 0.005


async def retrying(attempt: Callable[[], Awaitable[T]], *, attempts: int) -> T:
    """Run `attempt()` until it succeeds, at most `attempts` times, and return its result.

    `attempt` must be a whole unit of work: take its connection, open and finish its own
    transaction, hold nothing across calls, so running it again is safe. Only SQLSTATE
    40001 and 40P01 are retried; after the last attempt that error propagates and the
    app's handler answers 503 `conflict_retry` with Retry-After (app/errors.py). Every
    other exception propagates at once.
    """
    for n in range(attempts):
        try:
            return await attempt()
        except psycopg.Error as exc:
            if exc.sqlstate not in RETRYABLE or n == attempts - 1:
                raise
            logger.info(
                "retrying after SQLSTATE %s (attempt %d of %d)", exc.sqlstate, n + 1, attempts
            )
        await asyncio.sleep(random.uniform(0, BASE_DELAY * 2**n))
    raise AssertionError("unreachable: the last attempt returns or raises")

"""The one supervisor of every background loop: started with the app, stopped with it.

A loop is an async function that runs until cancelled. When one raises, the supervisor
logs it and runs it again after a pause that doubles while it keeps failing (FIRST_PAUSE up
to MAX_PAUSE): a database outage costs a retry now and then, never a dead loop or a
crashed app. One policy for every loop: the first failure of a run of failures is logged
as a warning with its cause (a traceback for anything that is not a database or network
error), repeats are counted, not logged, and the recovery (the loop has run
RECOVERED_AFTER seconds without failing) is logged once with how many failures it took.
"""

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import psycopg
from anyio.abc import TaskGroup
from psycopg_pool import PoolTimeout

logger = logging.getLogger("app.tasks")

Loop = Callable[[], Awaitable[None]]

FIRST_PAUSE = 0.1
MAX_PAUSE = 5.0
RECOVERED_AFTER = 30.0
# Failures that need no traceback: the database or the network said no.
EXPECTED = (psycopg.Error, PoolTimeout, OSError, TimeoutError)


@dataclass
class _Health:
    name: str
    failures: int = 0
    pause: float = FIRST_PAUSE

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures == 1:
            # A loop's own task group wraps what its tasks raised: say what that was.
            cause = exc
            while isinstance(cause, ExceptionGroup) and len(cause.exceptions) == 1:
                cause = cause.exceptions[0]
            logger.warning(
                "%s failed (retrying): %s",
                self.name,
                cause,
                exc_info=None if isinstance(cause, EXPECTED) else exc,
            )

    async def recovered_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        if self.failures:
            logger.info("%s recovered after %d failures", self.name, self.failures)
        self.failures, self.pause = 0, FIRST_PAUSE


class Supervisor:
    """Runs loops in one task group; `start` adds one (see the module's policy)."""

    def __init__(self, group: TaskGroup) -> None:
        self._group = group

    def start(self, name: str, loop: Loop) -> None:
        self._group.start_soon(_keep_running, _Health(name), loop, name=name)


async def _keep_running(health: _Health, loop: Loop) -> None:
    while True:
        failure = await _run_once(health, loop)
        if failure is None:
            return  # a loop that ends by itself is done
        health.failed(failure)
        await anyio.sleep(health.pause)
        health.pause = min(health.pause * 2, MAX_PAUSE)


async def _run_once(health: _Health, loop: Loop) -> Exception | None:
    """Run the loop until it ends or fails; its failure, if any. Meanwhile, RECOVERED_AFTER
    seconds without one mark it recovered."""
    failure: Exception | None = None
    async with anyio.create_task_group() as run:

        async def watched() -> None:
            nonlocal failure
            try:
                await loop()
            except Exception as exc:  # anything: logged, and the loop runs again
                failure = exc
            run.cancel_scope.cancel()

        run.start_soon(watched)
        run.start_soon(health.recovered_after, RECOVERED_AFTER)
    return failure


@asynccontextmanager
async def supervising() -> AsyncIterator[Supervisor]:
    """A supervisor for the block; on exit every loop it runs is cancelled and awaited."""
    async with anyio.create_task_group() as group:
        yield Supervisor(group)
        group.cancel_scope.cancel()

"""A value computed at most once per period, shared by every caller that asks meanwhile."""

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Recent(Generic[T]):
    """The last value `load()` returned, while it is younger than `seconds`.

    Callers that find it stale queue behind one load: a burst of requests costs one
    computation, not one each. Its age counts from when the load started, so a value is
    never older than `seconds` plus the load's own time. A load that fails or is cancelled
    (its client left) stores nothing; the next caller in the queue loads again.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._value: T | None = None
        self._loaded_at = float("-inf")
        self._loading = anyio.Lock()

    def _fresh(self) -> bool:
        return time.monotonic() - self._loaded_at < self._seconds

    async def get(self, load: Callable[[], Awaitable[T]]) -> T:
        if self._value is not None and self._fresh():
            return self._value
        async with self._loading:
            if self._value is not None and self._fresh():
                return self._value  # loaded by the caller we queued behind
            started = time.monotonic()
            value = await load()
            self._value, self._loaded_at = value, started
            return value

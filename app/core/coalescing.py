"""Calls made in one turn of the event loop, answered together by one call over all their keys.

Under load a worker holds dozens of requests at once, each wanting one row: one statement
for all of them costs one pool checkout, one round trip and one executor start in
PostgreSQL instead of one each. A single caller waits for nothing: its batch is sent on
the loop's next turn, holding only its own key.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# Answers for each key of a batch, in the batch's order: None where there is none.
Fetch = Callable[[Sequence[K]], Awaitable[Sequence[V | None]]]


class Coalescer(Generic[K, V]):
    """`await coalescer.get(key)`: `fetch` runs once per loop turn for every key asked in it.

    Every caller has a future of its own: one cancelled caller (its client went away)
    cancels nobody else's answer. A failed fetch raises its exception in every caller of
    the batch. At most `batch_max` keys go to one fetch; more run as further fetches side
    by side.
    """

    def __init__(self, fetch: Fetch[K, V], *, batch_max: int = 500) -> None:
        self._fetch = fetch
        self._batch_max = batch_max
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        # Running fetches: kept referenced until done (the loop holds tasks weakly).
        self._running: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._send)
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.append((key, future))
        return await future

    def _send(self) -> None:
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), self._batch_max):
            task = asyncio.create_task(self._answer(waiting[start : start + self._batch_max]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _answer(self, batch: list[tuple[K, asyncio.Future[V | None]]]) -> None:
        asked = [(key, future) for key, future in batch if not future.done()]
        if not asked:
            return
        try:
            answers = await self._fetch([key for key, _ in asked])
        except Exception as exc:
            for _, future in asked:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            # Cancelled (the process is stopping): so are its callers.
            for _, future in asked:
                future.cancel()
            raise
        for (_, future), answer in zip(asked, answers, strict=True):
            if not future.done():
                future.set_result(answer)

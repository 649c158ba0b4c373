"""A server-sent events reader for tests: the fields of each message as a client sees them."""

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Message:
    """One SSE message: an event (id, event, data) or only comments; `at` when it arrived."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)
    at: float = 0.0

    @property
    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


async def messages(response: httpx.Response) -> AsyncIterator[Message]:
    """The messages of a text/event-stream response, as they arrive (WHATWG SSE parsing)."""
    current = Message()
    async for line in response.aiter_lines():
        if line == "":
            current.at = time.monotonic()
            yield current
            current = Message()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            current.comments.append(value)
        elif name == "data":
            current.data = value if current.data is None else f"{current.data}\n{value}"
        elif name in ("id", "event"):
            setattr(current, name, value)


async def events(response: httpx.Response) -> AsyncIterator[Message]:
    """Only the messages that carry an event."""
    async for message in messages(response):
        if message.data is not None:
            yield message

"""The real app on a real socket (uvicorn in the test's event loop), for what ASGITransport
cannot show: a client that goes away, bodies that really stream, memory while they do."""

import asyncio
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from app.config import Settings
from app.main import create_app
from tests.cluster import free_port


@asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[str]:
    """Serve create_app(settings) on 127.0.0.1 and yield its base URL until exit."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # bounded: 10 s
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize()

"""A connection of its own, outside every pool, for what needs a session: LISTEN, the
sequencer role's lock."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
from psycopg.conninfo import make_conninfo

# Noticed within about half a minute when the other end silently goes away.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
SERVER_KEEPALIVES = (
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
)


@asynccontextmanager
async def session(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection for the block, closed however the block ends (cancelled
    too). Keepalives on both ends: a session lock it holds is released, a LISTEN dropped,
    when its host silently goes away."""
    conn = await psycopg.AsyncConnection.connect(make_conninfo(dsn, **KEEPALIVES), autocommit=True)
    try:
        await conn.execute(SERVER_KEEPALIVES)
        yield conn
    finally:
        # Shielded: an anyio cancellation would interrupt every await of the close too.
        with anyio.CancelScope(shield=True):
            await conn.close()

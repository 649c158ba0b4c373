"""The pool checks a connection at checkout only after it sat idle (app.db._check_if_idle)."""

import asyncio
from typing import Any

from httpx import AsyncClient
from psycopg import Connection

from app.db import CHECK_AFTER_IDLE
from tests.helpers import product


async def test_a_connection_killed_while_idle_is_replaced_before_a_request_draws_it(
    client: AsyncClient, db: Connection[Any]
) -> None:
    assert (await client.post("/products", json=product("IDLE-1"))).status_code == 201
    # One of the pool's connections dies (a backend crash, an idle timeout, a proxy).
    killed = db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE usename = 'inventory_app' AND datname = current_database() LIMIT 1"
    ).fetchone()
    assert killed == (True,)
    await asyncio.sleep(CHECK_AFTER_IDLE + 0.2)

    statuses = [(await client.get("/products/idle-1")).status_code for _ in range(10)]

    assert statuses == [200] * 10

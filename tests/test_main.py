"""app/main.py: the service runs its background loops; an app made without them (as most
tests make it) only answers requests."""

import asyncio
import gc
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from psycopg import Connection

from app.config import Settings
from app.main import create_app

SESSIONS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


def sessions(db: Connection[Any]) -> int:
    row = db.execute(SESSIONS).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.background
async def test_the_service_runs_its_loops_on_sessions_of_their_own(
    db: Connection[Any], settings: Settings
) -> None:
    # The request pool, then the loops' pool, LISTEN and the sequencer's session.
    async with LifespanManager(create_app(settings)):
        for _ in range(100):  # bounded: 5 s
            if sessions(db) >= settings.pool_size + 4:
                break
            await asyncio.sleep(0.05)
        assert sessions(db) >= settings.pool_size + 4


async def test_an_app_without_background_holds_its_request_pool_only(
    db: Connection[Any], settings: Settings
) -> None:
    async with LifespanManager(create_app(settings, background=False)):
        counts = []
        for _ in range(10):  # half a second: loops would have connected meanwhile
            counts.append(sessions(db))
            await asyncio.sleep(0.05)
    assert set(counts) == {settings.pool_size}


async def test_what_start_up_made_is_frozen_out_of_the_collectors_passes_until_it_stops(
    settings: Settings,
) -> None:
    gc.unfreeze()
    async with LifespanManager(create_app(settings, background=False)):
        # The app's modules, routes, models and pools: tens of thousands of objects.
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0

"""app/main.py: the service runs its background loops; an app made without them (as most
tests make it) only answers requests."""

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from psycopg import Connection

from app.config import Settings
from app.main import create_app

REPO = Path(__file__).resolve().parent.parent

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


def test_what_importing_the_service_made_is_frozen_out_of_the_collectors_passes() -> None:
    # A fresh interpreter, as a uvicorn worker is: the module's import freezes its objects.
    out = subprocess.run(
        [sys.executable, "-c", "import gc, app.main; print(gc.get_freeze_count())"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    # The app's modules, routes, models and statements: tens of thousands of objects.
    assert int(out.split()[-1]) > 10_000

"""pytest plugin for users of the Inventory API: a throwaway database with its schema per test,
and the service bound to it, in your own test suite.

Enable it with one line: `pytest -p pytest_inventory`, or `pytest_plugins = ["pytest_inventory"]`
in your top-level conftest.py. Fixtures:

- `inventory_db`: a psycopg connection (superuser) to a fresh database holding the service's
  schema, dropped after the test (pytest-postgresql's template clone);
- `inventory_settings`: the service's Settings for that database (connected as its own role,
  as in production); override this fixture to set tokens or limits;
- `inventory_app`: the ASGI app built from those settings, not yet started: run it with
  `with TestClient(inventory_app)` or asgi-lifespan's `LifespanManager`;
- `inventory_client`: a started starlette TestClient of `inventory_app`;
- `inventory_server`: the PostgreSQL server behind them, one per test session (per xdist
  worker): a private cluster in a temp dir on a free port, deleted at the end. As root it
  runs as the OS user postgres (PostgreSQL refuses root); otherwise as you.
"""

import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from psycopg import Connection
from pytest_postgresql import factories
from starlette.testclient import TestClient

from app.cluster import Cluster, DeployFiles
from app.config import Settings
from app.main import create_app


@dataclass(frozen=True)
class InventoryServer:
    """Where the session's server is: what pytest-postgresql's `depends_on` reads, and the
    service role's credentials. `host` is the superuser's private socket directory."""

    host: str
    port: int
    app_user: str
    app_password: str
    user: str = "postgres"
    password: str = ""
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None

    def app_dsn(self, dbname: str) -> str:
        """The service role's URL for database `dbname` (TCP on loopback, its password)."""
        credentials = f"{self.app_user}:{self.app_password}"
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{dbname}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def inventory_server() -> Iterator[InventoryServer]:
    # mkdtemp makes 0700; 0711 lets the postgres OS user (the server, as root) through.
    home = Path(tempfile.mkdtemp(prefix="pytest-inventory-"))
    home.chmod(0o711)
    cluster = Cluster(home / "data", port=_free_port(), fast=True)
    try:
        service = urlsplit(cluster.start())
        admin = parse_qs(urlsplit(cluster.admin_url()).query)
        yield InventoryServer(
            host=admin["host"][0],
            port=cluster.port,
            app_user=service.username or "",
            app_password=service.password or "",
        )
    finally:
        try:
            cluster.destroy()
        finally:
            shutil.rmtree(home, ignore_errors=True)


# The schema is loaded once per session into a template; each test gets a clone of it.
# A Path, not a string: pytest-postgresql takes a string for an import path.
inventory_noproc = factories.postgresql_noproc(
    load=[DeployFiles.default().schema], depends_on="inventory_server"
)
inventory_db = factories.postgresql("inventory_noproc")


@pytest.fixture
def inventory_settings(
    inventory_db: Connection[Any], inventory_server: InventoryServer
) -> Settings:
    """The service's settings for this test's database; the rest from the environment
    (INVENTORY_*), as the service reads them."""
    return Settings(database_url=inventory_server.app_dsn(inventory_db.info.dbname))


@pytest.fixture
def inventory_app(inventory_settings: Settings) -> FastAPI:
    return create_app(inventory_settings)


@pytest.fixture
def inventory_client(inventory_app: FastAPI) -> Iterator[TestClient]:
    # Entered: the app's lifespan runs (pool opened), and ends (pool closed) before the
    # test's database is dropped.
    with TestClient(inventory_app) as client:
        yield client

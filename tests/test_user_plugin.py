"""The pytest plugin users take home (pytest_inventory), used exactly as a user would: the
project installed from its wheel, a test suite of their own in a directory outside the
checkout, one line to enable the plugin, a pytest run of its own; as root and as an
unprivileged user."""

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import REPO, new_data_dir

# One worker builds the wheel and its environment, once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("user_plugin")]

# A user's suite: their code would talk to the API; here the tests do, through the fixtures.
USER_TESTS = """
import asyncio

import httpx
from asgi_lifespan import LifespanManager


def test_the_schema_is_there_and_the_rules_hold(inventory_db):
    inventory_db.execute("INSERT INTO products (sku, name, price) VALUES ('U-1', 'Mug', 5)")
    assert inventory_db.execute("SELECT count(*) FROM products").fetchone() == (1,)


def test_every_test_gets_a_fresh_database(inventory_db):
    assert inventory_db.execute("SELECT count(*) FROM products").fetchone() == (0,)


def test_the_service_on_that_database(inventory_client, inventory_db):
    created = inventory_client.post(
        "/products", json={"sku": "SHOP-1", "name": "Shop item", "price": "9.50"}
    )
    assert created.status_code == 201, created.text
    assert inventory_client.get("/products/shop-1").json()["sku"] == "SHOP-1"
    assert inventory_db.execute("SELECT sku FROM products").fetchall() == [("SHOP-1",)]


def test_the_app_in_an_event_loop_of_my_own(inventory_app):
    async def scenario():
        async with LifespanManager(inventory_app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return (await client.get("/products")).json()

    assert asyncio.run(scenario()) == []
"""


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """The project installed from its wheel into a directory of its own (its dependencies
    are the test environment's), as `pip install` would; readable by every user."""
    target = new_data_dir("inventory-site-")
    target.chmod(0o755)
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--disable-pip-version-check", "--target", str(target),
             str(REPO)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)


@pytest.fixture
def project() -> Iterator[Path]:
    """A user's project outside the checkout, readable by every user."""
    home = new_data_dir("inventory-user-project-")
    home.chmod(0o777)
    (home / "test_shop.py").write_text(USER_TESTS)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def user_env(installed: Path, *paths: str) -> dict[str, str]:
    """The environment of a user's shell: nothing of this checkout or of this test run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INVENTORY_", "PYTEST_", "PYTHON")) and k != "DATABASE_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join([str(installed), *paths])
    env["INVENTORY_LOG_LEVEL"] = "WARNING"
    return env


def pytest_run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_the_installed_plugin_comes_from_the_wheel_not_the_checkout(installed: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import app, pytest_inventory; print(app.__file__)"],
        cwd=installed.parent, env=user_env(installed), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert Path(where.strip()).is_relative_to(installed)
    deploy = installed / "app" / "cluster" / "deploy"
    assert (deploy / "schema.sql").read_text() == (REPO / "schema.sql").read_text()
    assert (deploy / "db" / "roles.sql").is_file() and (deploy / "db" / "migrate.sh").is_file()


def test_enabled_with_one_line_in_conftest(installed: Path, project: Path) -> None:
    (project / "conftest.py").write_text('pytest_plugins = ["pytest_inventory"]\n')
    done = pytest_run([sys.executable], project, user_env(installed))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout


def test_enabled_with_p_on_the_command_line(installed: Path, project: Path) -> None:
    done = pytest_run([sys.executable], project, user_env(installed))
    assert done.returncode != 0  # not enabled: the fixtures are unknown
    assert "fixture 'inventory_db' not found" in done.stdout
    env = user_env(installed)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pytest_inventory", "-p", "no:cacheprovider", "-q"],
        cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout


def unprivileged_python() -> str | None:
    """A Python 3.11 (the test environment's version) that the user nobody can run."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        done = subprocess.run(
            ["runuser", "-u", "nobody", "--", candidate, "-c", ""], capture_output=True
        )
        if done.returncode == 0:
            return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="this run is unprivileged already")
def test_as_an_unprivileged_user(installed: Path, project: Path) -> None:
    """Without root the server runs as the user running pytest (here: nobody)."""
    python = unprivileged_python()
    if python is None:
        pytest.skip("no Python of this version that the user nobody can run")
    site = sysconfig.get_paths()["purelib"]  # the test environment's packages
    check = ["runuser", "-u", "nobody", "--", "test", "-r", f"{site}/fastapi/__init__.py"]
    if subprocess.run(check).returncode != 0:
        pytest.skip(f"{site} is closed to other users")
    (project / "conftest.py").write_text('pytest_plugins = ["pytest_inventory"]\n')
    env = {**user_env(installed, site), "HOME": str(project), "PATH": "/usr/sbin:/usr/bin:/bin"}
    done = pytest_run(["runuser", "-u", "nobody", "--", python], project, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout

"""`./run.sh scale`: primary and replica clusters, PgBouncer, two API instances and HAProxy
on this machine, from the distribution's packages; `./run.sh scale stop` stops them."""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster import REPO, free_port, new_data_dir
from tests.helpers import product

pytestmark = pytest.mark.slow


def _run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        ["bash", str(REPO / "run.sh"), "scale", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.fixture
def topology() -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The topology started in a directory and on ports of its own: (its env, its URLs)."""
    directory = new_data_dir("inventory-scale-")
    env = {
        **os.environ,
        "INVENTORY_SCALE_DIR": str(directory),
        "INVENTORY_SCALE_PORT": str(free_port()),
        "INVENTORY_SCALE_PG_PORT": str(free_port()),
        "INVENTORY_SCALE_REPLICA_PORT": str(free_port()),
        "INVENTORY_SCALE_BOUNCER_PORT": str(free_port()),
        "INVENTORY_SCALE_API_PORT": str(free_port()),
        "INVENTORY_SCALE_API2_PORT": str(free_port()),
        "INVENTORY_LOG_LEVEL": "WARNING",
    }
    try:
        out = _run(env, "start")
        urls = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        yield env, urls
    finally:
        try:
            _run(env, "stop")
        finally:
            for name in ("replica", "primary"):
                subprocess.run(
                    ["bash", str(REPO / "db" / "cluster.sh"), "destroy", "--yes"],
                    env={**env, "INVENTORY_DATA_DIR": str(directory / name)},
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    check=False,
                )
            shutil.rmtree(directory, ignore_errors=True)


def test_a_create_and_a_read_through_the_load_balancer(
    topology: tuple[dict[str, str], dict[str, str]],
) -> None:
    env, urls = topology
    assert urls["URL"].endswith(f":{env['INVENTORY_SCALE_PORT']}"), "HAProxy is not in front"
    with httpx.Client(base_url=urls["URL"], timeout=10) as client:
        created = client.post("/products", json=product("SCALE-1", quantity=3))
        assert created.status_code == 201, created.text
        # Through either instance: the lookup from the primary at once, the page from the
        # replica once replayed (a moment).
        for _ in range(4):
            assert client.get("/products/scale-1").json()["quantity"] == 3
        deadline = time.monotonic() + 10
        while [p["sku"] for p in client.get("/products?limit=10").json()] != ["SCALE-1"]:
            assert time.monotonic() < deadline, "the page never showed the product"
            time.sleep(0.1)
        # The replica's state is probed every second and its lag read as the age of the last
        # replayed commit: right after an idle spell it reads "lagging" until the probe sees
        # the create replayed. Bounded, as the page above.
        while client.get("/readyz").json()["replica"]["state"] != "in use":
            assert time.monotonic() < deadline + 10, "the replica never came into use"
            time.sleep(0.1)
    # Both instances serve, each with the replica in use.
    for name in ("API_1", "API_2"):
        deadline = time.monotonic() + 10
        while "inventory_db_replica_in_use 1.0" not in httpx.get(f"{urls[name]}/metrics").text:
            assert time.monotonic() < deadline, f"{name} never used the replica"
            time.sleep(0.1)
    status = subprocess.run(
        ["bash", str(REPO / "db" / "scale.sh"), "status"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "not running" not in status, status

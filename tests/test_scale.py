"""`./run.sh scale`: primary and replica clusters, PgBouncer, two API instances and HAProxy
on this machine, from the distribution's packages; `./run.sh stop` stops them.

Run as a user runs it: `./run.sh scale` with the default for every port it derives (the
second instance's is the first one's plus one), `./run.sh scale status`, `./run.sh stop`."""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cluster import REPO, free_port, new_data_dir
from tests.helpers import product

pytestmark = [pytest.mark.slow, pytest.mark.alone]


def run_sh(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        ["bash", str(REPO / "run.sh"), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def free_port_pair() -> int:
    """A port p with p + 1 free as well (the instances' default ports)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two neighbouring free ports")


def recording(commands: tuple[str, ...], directory: Path, log: Path) -> str:
    """A PATH directory whose `commands` record their arguments in `log`, then run the real
    ones: what anyone on the machine could read in `ps` while they ran."""
    directory.mkdir()
    for name in commands:
        real = shutil.which(name)
        assert real is not None, name
        shim = directory / name
        shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> "{log}"\nexec "{real}" "$@"\n')
        shim.chmod(0o755)
    return f"{directory}:{os.environ['PATH']}"


@dataclass
class Topology:
    env: dict[str, str]
    urls: dict[str, str]
    directory: Path
    commands: Path


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    """The topology started in a directory and on ports of its own."""
    directory = new_data_dir("inventory-scale-")
    commands = tmp_path / "commands.log"
    env = {
        **os.environ,
        "PATH": recording(("env", "setsid", "runuser"), tmp_path / "bin", commands),
        "INVENTORY_SCALE_DIR": str(directory),
        "INVENTORY_SCALE_PORT": str(free_port()),
        "INVENTORY_SCALE_PG_PORT": str(free_port()),
        "INVENTORY_SCALE_REPLICA_PORT": str(free_port()),
        "INVENTORY_SCALE_BOUNCER_PORT": str(free_port()),
        "INVENTORY_SCALE_API_PORT": str(free_port_pair()),
        # ./run.sh stop also stops the embedded cluster: this test's own, never the checkout's.
        "INVENTORY_DATA_DIR": str(new_data_dir("inventory-scale-embedded-")),
        "INVENTORY_NO_DOCKER": "1",
        "INVENTORY_LOG_LEVEL": "WARNING",
    }
    env.pop("INVENTORY_SCALE_API2_PORT", None)
    try:
        out = run_sh(env, "scale")
        urls = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        yield Topology(env, urls, directory, commands)
    finally:
        try:
            run_sh(env, "stop")
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
            shutil.rmtree(env["INVENTORY_DATA_DIR"], ignore_errors=True)


def test_a_create_and_a_read_through_the_load_balancer(topology: Topology) -> None:
    env, urls = topology.env, topology.urls
    assert urls["URL"].endswith(f":{env['INVENTORY_SCALE_PORT']}"), "HAProxy is not in front"
    second = int(env["INVENTORY_SCALE_API_PORT"]) + 1
    assert urls["API_2"] == f"http://127.0.0.1:{second}"
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
    status = run_sh(env, "scale", "status")
    assert "not running" not in status, status
    assert "API instance 2: running" in status and "replica: running" in status, status

    run_sh(env, "stop")
    status = run_sh(env, "scale", "status")
    for what in ("HAProxy", "API instance 1", "API instance 2", "PgBouncer", "primary", "replica"):
        assert f"{what}: not running" in status, status
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{urls['URL']}/healthz")


def test_the_service_password_is_on_no_command_line(topology: Topology) -> None:
    """Environment variables reach the instances; arguments would be visible in ps."""
    env_file = (topology.directory / "primary" / "env").read_text()
    password = env_file.split("inventory_app:", 1)[1].split("@", 1)[0]
    assert len(password) == 32
    commands = topology.commands.read_text()
    # The instances were started through the recording commands: the check saw them.
    assert sum(line.startswith("setsid ") for line in commands.splitlines()) == 2, commands
    assert password not in commands

"""./run.sh as a newcomer uses it: a taken port, `./run.sh status`, Ctrl+C."""

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster import CLUSTER_SCRIPT, REPO, free_port, new_data_dir


@dataclass
class Checkout:
    """What one ./run.sh serves from: its data dir and ports, and the environment naming them."""

    data_dir: Path
    port: int
    pg_port: int
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO / "run.sh"), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cluster(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), command],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def serve(self, log: Path) -> subprocess.Popen[bytes]:
        """./run.sh in a session of its own, as a terminal runs it: Ctrl+C goes to its
        whole process group. Returns once the API answers."""
        with log.open("w") as out:
            served = subprocess.Popen(
                ["bash", str(REPO / "run.sh")], env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while ready(self.port) != 200:
            assert served.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        return served


def ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


@pytest.fixture
def checkout() -> Iterator[Checkout]:
    data_dir = new_data_dir()
    env = {
        **os.environ,
        "PORT": str(free_port()),
        "INVENTORY_PG_PORT": str(free_port()),
        "INVENTORY_DATA_DIR": str(data_dir),
        "INVENTORY_PG_FAST": "1",
        "INVENTORY_NO_DOCKER": "1",
    }
    for key in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR", "HOST"):
        env.pop(key, None)
    place = Checkout(data_dir, int(env["PORT"]), int(env["INVENTORY_PG_PORT"]), env)
    try:
        yield place
    finally:
        place.run("stop")
        # Whatever run.sh did, the cluster must not outlive its data dir.
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "destroy", "--yes"], env=env, capture_output=True
        )
        shutil.rmtree(data_dir, ignore_errors=True)


def interrupt(served: subprocess.Popen[bytes]) -> int:
    """Ctrl+C: SIGINT to the foreground process group, run.sh and uvicorn alike."""
    os.killpg(served.pid, signal.SIGINT)
    return served.wait(timeout=60)


def test_a_taken_port_is_refused_naming_port_before_anything_starts(checkout: Checkout) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", checkout.port))
        taken.listen()
        began = time.monotonic()
        refused = checkout.run()
        elapsed = time.monotonic() - began

    assert refused.returncode == 1, refused.stderr
    assert f"port {checkout.port} on 127.0.0.1 is already in use" in refused.stderr
    assert f"PORT={checkout.port + 1} ./run.sh" in refused.stderr
    assert "the API on" not in refused.stderr  # nothing announced
    assert elapsed < 10  # before the virtual environment and the database
    assert checkout.cluster("status").returncode == 3
    assert not (checkout.data_dir / "uvicorn.pid").exists()


@pytest.mark.slow
def test_status_says_what_runs_and_ctrl_c_stops_what_run_sh_started(
    checkout: Checkout, tmp_path: Path
) -> None:
    served = checkout.serve(tmp_path / "serve.log")
    api_pid = int((checkout.data_dir / "uvicorn.pid").read_text())

    status = checkout.run("status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == (
        f"API:       running, pid {api_pid}, http://127.0.0.1:{checkout.port}"
        f" (docs: http://127.0.0.1:{checkout.port}/docs)"
    )
    assert lines[1] == (
        f"database:  embedded PostgreSQL, running on 127.0.0.1:{checkout.pg_port}"
        f" ({checkout.data_dir})"
    )
    assert lines[2] == f"data dir:  {checkout.data_dir}"

    assert interrupt(served) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "stopping the database this ./run.sh started" in log
    assert ready(checkout.port) == 0
    assert checkout.cluster("status").returncode == 3
    assert not (checkout.data_dir / "uvicorn.pid").exists()  # no stale pid file
    stopped = checkout.run("status")
    assert stopped.returncode == 3
    assert stopped.stdout.splitlines()[0] == "API:       not running"


@pytest.mark.slow
def test_ctrl_c_leaves_a_database_that_ran_before_and_says_so(
    checkout: Checkout, tmp_path: Path
) -> None:
    assert checkout.cluster("start").returncode == 0
    served = checkout.serve(tmp_path / "serve.log")

    assert interrupt(served) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "the database keeps running (it was running before this ./run.sh)" in log
    assert "./run.sh stop stops it" in log
    assert ready(checkout.port) == 0
    assert checkout.cluster("status").returncode == 0

    assert checkout.run("stop").returncode == 0
    assert checkout.cluster("status").returncode == 3


def test_status_and_stop_cover_a_scale_topology_left_on_disk(
    checkout: Checkout, tmp_path: Path
) -> None:
    # ./run.sh scale's state directory, with every port left at its default (the second
    # instance's included: its default once named an unset variable).
    checkout.env["INVENTORY_SCALE_DIR"] = str(tmp_path / "scale")
    (tmp_path / "scale").mkdir()
    for key in [k for k in checkout.env if k.startswith("INVENTORY_SCALE_") and "DIR" not in k]:
        del checkout.env[key]

    status = checkout.run("status")
    assert status.returncode == 3, status.stderr
    assert "scale topology (./run.sh scale):" in status.stdout
    assert "API instance 2: not running" in status.stdout
    stopped = checkout.run("stop")
    assert stopped.returncode == 0, stopped.stderr


# ------------------------------------------------------------------------------------------
# ./run.sh: one server per data dir


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


@pytest.mark.slow
def test_a_second_run_sh_is_refused_and_stop_still_stops_the_first(tmp_path: Path) -> None:
    data_dir = new_data_dir()
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "INVENTORY_PG_PORT": str(free_port()),
        "INVENTORY_DATA_DIR": str(data_dir),
        "INVENTORY_PG_FAST": "1",
        "INVENTORY_NO_DOCKER": "1",
        "CI": "true",
    }
    for key in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR", "HOST"):
        env.pop(key, None)
    readyz = f"http://127.0.0.1:{port}/readyz"
    metrics = data_dir / "metrics"

    def run_sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO / "run.sh"), *args], env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(
            ["bash", str(REPO / "run.sh")], env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while get(readyz) != 200:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.5)
        assert get(f"http://127.0.0.1:{port}/healthz") == 200
        counters = sorted(metrics.glob("*.db"))
        assert counters

        second = run_sh()
        assert second.returncode != 0
        assert "the API is already running" in second.stderr
        assert str(data_dir) in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert f"http://127.0.0.1:{port}" in second.stderr

        assert first.poll() is None
        assert get(readyz) == 200
        api_pid = (data_dir / "uvicorn.pid").read_text().strip()
        assert "uvicorn" in Path(f"/proc/{api_pid}/cmdline").read_text()
        assert set(counters) <= set(metrics.glob("*.db"))

        stopped = run_sh("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert first.wait(timeout=30) is not None
        assert get(readyz) == 0
        status = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "status"], env=env, stdout=subprocess.PIPE, text=True
        )
        assert status.returncode == 3, status.stdout
    finally:
        if first.poll() is None:
            first.terminate()
            first.wait(timeout=30)
        run_sh("destroy", "--yes")
        # Whatever run.sh did, the cluster must not outlive its data dir.
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "destroy", "--yes"], env=env, check=False)
        shutil.rmtree(data_dir, ignore_errors=True)

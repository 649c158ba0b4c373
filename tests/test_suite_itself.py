"""The test suite's own behaviour, as a contributor meets it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.alone]

REPO = Path(__file__).resolve().parent.parent


def test_a_run_of_one_test_ends_within_seconds() -> None:
    # The app's LISTEN and sequencer sessions, cut off in their start-up when a test's app
    # stopped at once, left server processes waiting for the password until
    # authentication_timeout (60 s); the run's closing DROP DATABASE waited behind them.
    # One test took 63 s, the fast tier a minute more per worker.
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "tests/test_products.py::test_invalid_body_is_422_naming_the_field",
         "-k", "body0"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    took = time.monotonic() - started

    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert took < 30, took


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_run_killed_midway_leaves_no_server_behind(tmp_path: Path) -> None:
    # A killed run (a CI timeout, Ctrl+C twice, SIGKILL) runs no teardown: its servers kept
    # running, one at full CPU for minutes finishing a statement nobody would read.
    waits = tmp_path / "test_waits.py"
    waits.write_text(
        "import time\n"
        "def test_waits(pg_server):\n"
        "    print('DATA_DIR', pg_server.data_dir, flush=True)\n"
        "    time.sleep(600)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-s", "-q", "-p", "no:randomly",
         "-p", "no:cacheprovider", str(waits)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    ) as run:  # fmt: skip
        assert run.stdout is not None
        line = next(line for line in run.stdout if line.startswith("DATA_DIR"))
        data_dir = Path(line.split()[1])
        postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        assert _running(postmaster)
        run.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_running(postmaster) or data_dir.exists()):
        time.sleep(0.2)

    assert not _running(postmaster)
    assert not data_dir.exists()

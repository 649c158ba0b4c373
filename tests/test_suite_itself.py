"""The test suite's own behaviour, as a contributor meets it."""

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

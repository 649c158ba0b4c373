"""What the deployment tests share: the previous release, who runs the server, the
cluster manager's command line."""

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cluster import CLUSTER_SCRIPT, REPO, Cluster

# The release before the current work: its schema.sql is what a live database holds when the
# new one is applied. Move it forward when a release is cut.
PREVIOUS_RELEASE = "52af07a"
RELOCATE_ROOT = Path("/var/lib/inventory-api")
IS_ROOT = os.geteuid() == 0
SERVER_UID = pwd.getpwnam("postgres").pw_uid if IS_ROOT else os.geteuid()


def bindir() -> Path:
    out = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "bindir"], stdout=subprocess.PIPE, text=True, check=True
    )
    return Path(out.stdout.strip())


def git_show(path: str) -> str:
    """`path` as of PREVIOUS_RELEASE, or a skip saying why it cannot be had."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous release's files come from git history")
    done = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{PREVIOUS_RELEASE}:{path}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"commit {PREVIOUS_RELEASE} is not in this checkout's history (a shallow clone or an "
            f"export?): {done.stderr.strip()}"
        )
    return done.stdout


def run_script(
    cluster: Cluster, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """cluster.sh with stderr captured (what it says to the user), whatever its exit status."""
    return subprocess.run(
        ["bash", str(cluster.script), *args],
        env=cluster.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

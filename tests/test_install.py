"""What the app never does when PostgreSQL is missing or moved: run a package manager, delete
another cluster."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.cluster import (
    CLUSTER_SCRIPT,
    REPO,
    Cluster,
    free_port,
    new_data_dir,
)
from tests.deploy_helpers import (
    IS_ROOT,
    RELOCATE_ROOT,
    run_script,
)

# ------------------------------------------------------------------------------------------
# No package manager from the app; no deleted data


def unshare_works() -> bool:
    if not IS_ROOT or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], stderr=subprocess.DEVNULL).returncode == 0


def without_postgres(command: list[str]) -> list[str]:
    """`command` in a private mount namespace where the installed server is hidden."""
    hide = " && ".join(
        f"mount -t tmpfs none {d}"
        for d in ("/usr/lib/postgresql", "/opt/homebrew/opt", "/usr/local/opt")
        if Path(d).is_dir()
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{hide} && exec "$@"',
            "sh", *command]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not unshare_works(), reason="needs root and unshare -m to hide the server")
def test_the_app_never_runs_the_package_manager_and_says_to_run_run_sh(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "apt-get-calls"
    # Records its calls; "installs" nothing, so the server stays missing.
    (fake / "apt-get").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" = update ] && exit 0\nexit 1\n'
    )
    (fake / "apt-get").chmod(0o755)
    data_dir = new_data_dir()
    env = {
        **os.environ,
        "PATH": f"{fake}:/usr/sbin:/usr/bin:/sbin:/bin",
        "INVENTORY_PG_PORT": str(free_port()),
    }
    env.pop("PG_BINDIR", None)
    try:
        # What the lifespan of `uvicorn app.main:app` does without DATABASE_URL.
        lifespan = subprocess.run(
            without_postgres([
                sys.executable, "-c",
                "import asyncio; from app.embedded import start_embedded; "
                f"asyncio.run(start_embedded({str(data_dir)!r}))",
            ]),
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert lifespan.returncode != 0
        assert "EmbeddedDatabaseError" in lifespan.stderr
        assert "Run ./run.sh once" in lifespan.stderr
        assert not calls.exists(), calls.read_text()

        # The explicit set-up command does install.
        setup = subprocess.run(
            without_postgres(["bash", str(CLUSTER_SCRIPT), "bindir"]),
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert setup.returncode != 0  # the fake apt-get fails
        assert "install -y -q postgresql" in calls.read_text()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="only root relocates a cluster")
def test_relocation_is_announced_every_start_and_never_deletes_another_cluster() -> None:
    closed = Path(tempfile.mkdtemp(prefix="inventory-closed-"))  # 0700: postgres cannot enter
    cluster = Cluster(data_dir=closed / "data")
    relocated = RELOCATE_ROOT / hashlib.sha256(str(cluster.data_dir).encode()).hexdigest()[:16]
    # The cluster of another checkout whose data dir is gone: not ours to delete.
    foreign = RELOCATE_ROOT / f"test-foreign-{uuid.uuid4().hex[:8]}"
    (foreign / "pgdata").mkdir(parents=True)
    (foreign / "pgdata" / "PG_VERSION").write_text("15\n")
    (foreign / "owner").write_text(f"/nonexistent/{uuid.uuid4().hex}/data\n")
    try:
        for _ in range(2):
            started = run_script(cluster, "start")
            assert started.returncode == 0, started.stderr
            assert f"data is in {relocated}, not in {cluster.data_dir}" in started.stderr
            assert f"cannot enter {closed}" in started.stderr
            assert f"INVENTORY_DATA_DIR={cluster.data_dir} db/cluster.sh destroy --yes" in (
                started.stderr
            )
            assert f"{foreign} belongs to" in started.stderr and "left alone" in started.stderr
        assert (relocated / "pgdata" / "PG_VERSION").is_file()
        assert (foreign / "pgdata" / "PG_VERSION").is_file()

        refused = run_script(cluster, "destroy")
        assert refused.returncode != 0
        assert "--yes" in refused.stderr
        assert (relocated / "pgdata" / "PG_VERSION").is_file()

        destroyed = run_script(cluster, "destroy", "--yes")
        assert destroyed.returncode == 0, destroyed.stderr
        assert not relocated.exists()
        assert not cluster.data_dir.exists()
        assert closed.is_dir()
        assert (foreign / "pgdata" / "PG_VERSION").is_file()
    finally:
        run_script(cluster, "destroy", "--yes")
        shutil.rmtree(foreign, ignore_errors=True)
        shutil.rmtree(closed, ignore_errors=True)

"""The cluster manager's clusters: who gets which credentials, what the files let others read,
the lifespan under uvloop, and a previous release's cluster taken over."""

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from app.embedded import start_embedded
from tests.cluster import (
    CLUSTER_SCRIPT,
    REPO,
    Cluster,
    free_port,
    make_checkout,
    new_data_dir,
    remove_cluster,
)
from tests.deploy_helpers import SERVER_UID, git_show

# ------------------------------------------------------------------------------------------
# Who gets which credentials; what the files let others read


@pytest.mark.slow
def test_start_hands_out_only_the_service_role(scratch: Cluster) -> None:
    out = scratch.run("start")
    assert re.fullmatch(
        rf"DATABASE_URL=postgresql://inventory_app:[0-9a-f]{{32}}@127\.0\.0\.1:{scratch.port}"
        r"/inventory\n",
        out,
    ), out
    env_file = scratch.data_dir / "env"
    assert env_file.read_text() == out
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    scratch.start()
    with psycopg.connect(scratch.admin_dsn("inventory")) as conn:
        assert conn.execute(
            "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'"
        ).fetchone() == (True,)
    # No password could open the superuser over TCP.
    with pytest.raises(psycopg.OperationalError, match="rejects"):
        psycopg.connect(
            host="127.0.0.1", port=scratch.port, user="postgres", password="x", dbname="inventory"
        )
    socket_dir = Path(scratch.host).stat()
    assert stat.S_IMODE(socket_dir.st_mode) == 0o700
    assert socket_dir.st_uid == SERVER_UID


@pytest.mark.slow
async def test_the_embedded_path_gives_the_app_the_service_role_only(
    scratch: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in scratch.env().items():
        monkeypatch.setenv(key, value)
    url = await start_embedded(str(scratch.data_dir))
    assert urlsplit(url).username == "inventory_app"
    assert urlsplit(url).hostname == "127.0.0.1"


@pytest.mark.slow
def test_the_lifespan_under_uvloop_returns_once_the_cluster_runs(tmp_path: Path) -> None:
    """uvicorn's workers run uvloop; the cluster is started from a worker thread of its
    loop, and the server it leaves running must hold none of the worker's descriptors."""
    pytest.importorskip("uvloop", reason="uvicorn[standard] brings uvloop")
    data_dir = new_data_dir()
    env = {**os.environ, "INVENTORY_PG_PORT": str(free_port()), "INVENTORY_PG_FAST": "1"}
    try:
        started = subprocess.run(
            [
                sys.executable, "-c",
                "import uvloop; from app.embedded import start_embedded; "
                f"print(uvloop.run(start_embedded({str(data_dir)!r})))",
            ],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith("postgresql://inventory_app:")
    finally:
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "destroy", "--yes"],
            env={**env, "INVENTORY_DATA_DIR": str(data_dir)}, check=False,
        )  # fmt: skip
        shutil.rmtree(data_dir, ignore_errors=True)


def test_cluster_log_and_data_files_are_private(pg_server: Cluster) -> None:
    log = pg_server.data_dir / "postgres.log"
    assert log.stat().st_size > 0
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert log.stat().st_uid == SERVER_UID
    pgdata = pg_server.data_dir / "pgdata"
    for path in [pgdata, *pgdata.rglob("*")]:
        info = path.lstat()
        # 0600/0640 files, 0700/0750 directories: nothing for others, no group writes.
        assert stat.S_IMODE(info.st_mode) & 0o027 == 0, path
        assert info.st_uid == SERVER_UID, path


def test_test_clusters_are_not_relocated(pg_server: Cluster) -> None:
    pgdata = pg_server.data_dir / "pgdata"
    assert pgdata.is_dir() and not pgdata.is_symlink()


@pytest.mark.slow
def test_a_cluster_of_the_previous_release_is_taken_over(tmp_path: Path) -> None:
    files = {name: git_show(name) for name in ("db/cluster.sh", "db/roles.sql", "schema.sql")}
    old = Cluster(
        data_dir=new_data_dir(), script=make_checkout(tmp_path / "old", files) / "db" / "cluster.sh"
    )
    new = Cluster(data_dir=old.data_dir, port=old.port)
    try:
        urls = dict(line.split("=", 1) for line in old.run("start").splitlines())
        with psycopg.connect(urls["ADMIN_DATABASE_URL"]) as conn:
            conn.execute("INSERT INTO products (sku, name, price) VALUES ('OLD-1', 'Kept', 1)")

        # Still running, as the old script left it: the new one takes it over in place.
        new.start()
        assert (old.data_dir / "env").read_text().splitlines() == [
            f"DATABASE_URL={urls['DATABASE_URL']}"
        ]
        with psycopg.connect(new.admin_dsn("inventory")) as conn:
            assert conn.execute("SELECT name FROM products").fetchall() == [("Kept",)]
            assert conn.execute(
                "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'"
            ).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(urls["ADMIN_DATABASE_URL"])
        with psycopg.connect(urls["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT count(*) FROM products").fetchone() == (1,)
        assert stat.S_IMODE((old.data_dir / "postgres.log").stat().st_mode) == 0o600
    finally:
        remove_cluster(new)

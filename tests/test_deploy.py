"""Deploying: db/cluster.sh, db/migrate.sh, ./run.sh and compose, on real clusters and processes."""

import os
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from app.embedded import start_embedded
from tests.cluster import (
    REPO,
    Cluster,
    new_data_dir,
    remove_cluster,
)

# The release before the current work: its schema.sql is what a live database holds when the
# new one is applied. Move it forward when a release is cut.
PREVIOUS_RELEASE = "52af07a"
IS_ROOT = os.geteuid() == 0
SERVER_UID = pwd.getpwnam("postgres").pw_uid if IS_ROOT else os.geteuid()


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


def make_checkout(root: Path, files: dict[str, str] | None = None) -> Path:
    """A copy of the deploy files in the repository's layout: its schema can be changed
    without touching the real one. `files` gives other contents (e.g. an older release)."""
    root.mkdir(parents=True)
    (root / "db").mkdir()
    for name in ("db/cluster.sh", "db/roles.sql", "schema.sql"):
        text = files[name] if files and name in files else (REPO / name).read_text()
        (root / name).write_text(text)
    return root


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own, run from a copied checkout (its schema.sql may be edited)."""
    cluster = Cluster(
        data_dir=new_data_dir(), script=make_checkout(tmp_path / "checkout") / "db" / "cluster.sh"
    )
    try:
        yield cluster
    finally:
        remove_cluster(cluster)


# ------------------------------------------------------------------------------------------
# Who gets which credentials; what the files let others read


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


async def test_the_embedded_path_gives_the_app_the_service_role_only(
    scratch: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in scratch.env().items():
        monkeypatch.setenv(key, value)
    url = await start_embedded(str(scratch.data_dir))
    assert urlsplit(url).username == "inventory_app"
    assert urlsplit(url).hostname == "127.0.0.1"


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

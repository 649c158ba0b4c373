"""The cluster manager (app.cluster) through its Python face: start, stop, status, replica,
destroy; as root (the server runs as the OS user postgres) and as an unprivileged user."""

import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from app.cluster import Cluster, ClusterError
from app.cluster.binaries import find_bindir
from tests.cluster import free_port, make_checkout, new_data_dir

IS_ROOT = os.geteuid() == 0
SERVER_USER = "postgres" if IS_ROOT else pwd.getpwuid(os.geteuid()).pw_name


def postmaster_uid(cluster: Cluster) -> int:
    pid = (cluster.layout.pgdata / "postmaster.pid").read_text().split()[0]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def admin_dsn(cluster: Cluster, dbname: str = "inventory") -> str:
    url = urlsplit(cluster.admin_url())
    host, port = parse_qs(url.query)["host"][0], parse_qs(url.query)["port"][0]
    return f"host={host} port={port} user=postgres dbname={dbname}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    made = Cluster(new_data_dir() / "data", port=free_port(), fast=True)
    try:
        yield made
    finally:
        made.destroy()
        shutil.rmtree(made.data_dir.parent, ignore_errors=True)


@pytest.mark.slow
def test_start_gives_the_service_role_over_tcp_and_the_superuser_over_the_socket(
    cluster: Cluster,
) -> None:
    url = cluster.start()
    parts = urlsplit(url)
    assert (parts.username, parts.hostname, parts.port) == (
        "inventory_app",
        "127.0.0.1",
        cluster.port,
    )
    assert cluster.env_text() == f"DATABASE_URL={url}\n"
    assert stat.S_IMODE(cluster.layout.env_file.stat().st_mode) == 0o600
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("inventory_app",)
        # The schema is there, as the service role sees it.
        assert conn.execute("SELECT count(*) FROM products").fetchone() == (0,)
    with psycopg.connect(admin_dsn(cluster)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert cluster.status() == cluster.port
    # PostgreSQL refuses root: as root the server is the postgres OS user's.
    assert postmaster_uid(cluster) == pwd.getpwnam(SERVER_USER).pw_uid
    admins = (cluster.layout.pgdata / "pg_ident.conf").read_text()
    expected = {SERVER_USER, "root"} if IS_ROOT else {SERVER_USER}
    assert {
        line.split()[1] for line in admins.splitlines() if line.startswith("inventory_admin")
    } == expected


@pytest.mark.slow
def test_a_second_start_joins_the_running_server_with_the_same_password(
    cluster: Cluster,
) -> None:
    first = cluster.start()
    pid = (cluster.layout.pgdata / "postmaster.pid").read_text().split()[0]
    assert cluster.start() == first
    assert (cluster.layout.pgdata / "postmaster.pid").read_text().split()[0] == pid


@pytest.mark.slow
def test_stop_is_fine_twice_and_start_brings_the_data_back(cluster: Cluster) -> None:
    url = cluster.start()
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO products (sku, name, price) VALUES ('KEPT-1', 'Kept', 1)")
    assert cluster.stop() is True
    assert cluster.status() is None
    assert cluster.stop() is False
    with pytest.raises(ClusterError, match="not running"):
        cluster.admin_url()
    assert cluster.start() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT sku FROM products").fetchall() == [("KEPT-1",)]


@pytest.mark.slow
def test_a_replica_streams_the_primarys_writes_and_refuses_its_own(cluster: Cluster) -> None:
    url = cluster.start()
    replica = Cluster(new_data_dir() / "replica", port=free_port(), fast=True)
    try:
        replica_url = replica.replica(cluster.data_dir)
        # The primary's service role and password: roles come with the data.
        assert urlsplit(replica_url).password == urlsplit(url).password
        assert urlsplit(replica_url).port == replica.port
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO products (sku, name, price) VALUES ('REP-1', 'Copied', 1)")
        with psycopg.connect(replica_url, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while not conn.execute("SELECT sku FROM products").fetchall():
                assert time.monotonic() < deadline, "the insert never reached the replica"
                time.sleep(0.05)
            assert conn.execute("SELECT sku FROM products").fetchall() == [("REP-1",)]
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO products (sku, name, price) VALUES ('X', 'x', 1)")
        # Started again, it is the same replica.
        replica.stop()
        assert replica.replica(cluster.data_dir) == replica_url
        with pytest.raises(ClusterError, match="its own replica"):
            cluster.replica(cluster.data_dir)
    finally:
        replica.destroy()
        shutil.rmtree(replica.data_dir.parent, ignore_errors=True)


@pytest.mark.slow
def test_destroy_asks_first_and_deletes_only_what_it_made(cluster: Cluster) -> None:
    cluster.start()
    mine = cluster.data_dir / "notes.txt"
    mine.write_text("the user's own file")
    with pytest.raises(ClusterError, match="nothing deleted"):
        cluster.destroy(confirm=lambda targets: False)
    assert cluster.status() == cluster.port
    asked: list[Path] = []
    assert cluster.destroy(confirm=lambda targets: asked.extend(targets) or True) is True
    assert set(asked) == {cluster.data_dir / n for n in ("pgdata", "postgres.log", "env")}
    assert cluster.status() is None
    assert sorted(p.name for p in cluster.data_dir.iterdir()) == ["notes.txt"]
    assert cluster.destroy() is False


@pytest.mark.slow
def test_a_taken_port_is_named_with_the_setting_that_changes_it(cluster: Cluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", cluster.port))
        taken.listen()
        with pytest.raises(ClusterError, match=f"port {cluster.port} .* INVENTORY_PG_PORT"):
            cluster.start()


@pytest.mark.slow
def test_a_deep_data_dir_gets_a_short_private_socket_dir() -> None:
    deep = new_data_dir() / ("d" * 60) / ("e" * 60)
    made = Cluster(deep, port=free_port(), fast=True)
    try:
        made.start()
        socket_dir = Path(parse_qs(urlsplit(made.admin_url()).query)["host"][0])
        assert not socket_dir.is_relative_to(deep)
        assert len(str(socket_dir)) < 80
        info = socket_dir.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == pwd.getpwnam(SERVER_USER).pw_uid
        made.destroy()
        assert not socket_dir.exists()
    finally:
        made.destroy()
        shutil.rmtree(deep.parents[1], ignore_errors=True)


def test_bindir_is_pg_bindir_else_the_highest_packaged_version(tmp_path: Path) -> None:
    def server_in(directory: Path) -> Path:
        directory.mkdir(parents=True)
        (directory / "initdb").write_text("#!/bin/sh\n")
        (directory / "initdb").chmod(0o755)
        return directory

    debian = tmp_path / "usr-lib-postgresql"
    for version in ("9.6", "15", "13"):
        server_in(debian / version / "bin")
    (debian / "16" / "bin").mkdir(parents=True)  # a client-only version: no initdb
    empty = {"PATH": str(tmp_path / "nothing")}
    assert find_bindir(empty, debian_root=debian, homebrew_roots=()) == debian / "15" / "bin"

    own = server_in(tmp_path / "own" / "bin")
    given = {**empty, "PG_BINDIR": str(own)}
    assert find_bindir(given, debian_root=debian, homebrew_roots=()) == own
    with pytest.raises(ClusterError, match=r"PG_BINDIR=.* holds no initdb") as refused:
        find_bindir({**empty, "PG_BINDIR": str(tmp_path)}, debian_root=debian)
    assert refused.value.exit_status == 2
    assert find_bindir(empty, debian_root=tmp_path / "none", homebrew_roots=()) is None


def system_python() -> str | None:
    """A Python 3.11+ that an unprivileged user can run (root's pyenv it cannot)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        done = subprocess.run(
            ["runuser", "-u", "nobody", "--", candidate, "-c",
             "import sys; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="as root, another user is simulated with runuser")
def test_as_an_unprivileged_user_the_server_is_that_users_and_only_it_is_admin() -> None:
    """What a developer gets on a laptop: no runuser, no postgres OS user involved, the
    command line run as the caller, whose server and socket it is."""
    python = system_python()
    if python is None:
        pytest.skip("no Python 3.11+ that the user nobody can run")
    home = new_data_dir()
    # A copy of the manager: the checkout itself may be closed to other users (under /root).
    script = make_checkout(home / "checkout") / "db" / "cluster.sh"
    shutil.chown(home, "nobody")
    data_dir = home / "data"
    port = free_port()
    env = {
        "PATH": f"{Path(python).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "INVENTORY_DATA_DIR": str(data_dir),
        "INVENTORY_PG_PORT": str(port),
        "INVENTORY_PG_FAST": "1",
        **({"PG_BINDIR": os.environ["PG_BINDIR"]} if "PG_BINDIR" in os.environ else {}),
    }

    def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "nobody", "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
             "bash", str(script), *args],
            cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    try:
        started = as_nobody("start")
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip().removeprefix("DATABASE_URL=")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("inventory_app",)
        nobody = pwd.getpwnam("nobody").pw_uid
        view = Cluster(data_dir, port=port)
        assert postmaster_uid(view) == nobody
        for path in (data_dir / "env", data_dir / "pgdata", data_dir / "socket"):
            assert path.stat().st_uid == nobody, path
        assert stat.S_IMODE((data_dir / "env").stat().st_mode) == 0o600
        idents = (data_dir / "pgdata" / "pg_ident.conf").read_text().splitlines()
        assert [line.split()[1] for line in idents if line.startswith("inventory_admin")] == [
            "nobody"
        ]
        superuser = as_nobody("psql", "-Atc", "SELECT current_user")
        assert superuser.stdout == "postgres\n", superuser.stderr
        # Root is nobody's admin here: it is not in the map.
        with pytest.raises(psycopg.OperationalError, match="Peer authentication failed"):
            psycopg.connect(
                f"host={data_dir / 'socket'} port={port} user=postgres dbname=inventory"
            )
        assert as_nobody("status").returncode == 0
        assert as_nobody("stop").returncode == 0
        assert as_nobody("status").returncode == 3
        destroyed = as_nobody("destroy", "--yes")
        assert destroyed.returncode == 0, destroyed.stderr
        assert not data_dir.exists()
    finally:
        as_nobody("destroy", "--yes")
        shutil.rmtree(home, ignore_errors=True)

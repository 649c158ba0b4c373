"""Throwaway PostgreSQL clusters for tests, run by the cluster manager (app.cluster)."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from app.cluster import Cluster as Manager
from app.cluster import DeployFiles
from app.cluster.binaries import server_bindir

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO / "db" / "cluster.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_data_dir(prefix: str = "inventory-test-") -> Path:
    """A temp dir the postgres OS user can traverse (mkdtemp makes 0700), so that the
    manager run as root keeps the cluster in it instead of relocating it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def make_checkout(root: Path, files: dict[str, str] | None = None) -> Path:
    """A copy of the deploy files and the cluster manager in the repository's layout: its
    schema can be changed without touching the real one. `files` gives other contents (e.g.
    an older release)."""
    manager = [str(p.relative_to(REPO)) for p in (REPO / "app" / "cluster").glob("*.py")]
    (root / "app" / "cluster").mkdir(parents=True)
    (root / "db").mkdir()
    for name in (
        "db/cluster.sh", "db/migrate.sh", "db/roles.sql", "schema.sql", "app/__init__.py",
        *manager,
    ):  # fmt: skip
        text = files[name] if files and name in files else (REPO / name).read_text()
        (root / name).write_text(text)
    return root


@dataclass
class Cluster:
    """A private cluster; its attributes are what pytest-postgresql's depends_on reads.

    `host` is the directory of the superuser's unix socket (the superuser has no password
    and no TCP access); the service role connects over TCP on `app_host`. `script` is the
    command line of the checkout it runs from (a copied checkout in tests/test_migrate.py).
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = ""
    user: str = "postgres"
    password: str = ""
    app_host: str = "127.0.0.1"
    app_user: str = "inventory_app"
    app_password: str = ""
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None
    script: Path = CLUSTER_SCRIPT

    @property
    def manager(self) -> Manager:
        files = DeployFiles(self.script.parent.parent)
        return Manager(self.data_dir, port=self.port, fast=True, files=files)

    def env(self) -> dict[str, str]:
        """The environment that makes the command line (`script`) mean this cluster."""
        return {
            **os.environ,
            "INVENTORY_DATA_DIR": str(self.data_dir),
            "INVENTORY_PG_PORT": str(self.port),
            "INVENTORY_PG_FAST": "1",
        }

    def run(self, *args: str, timeout: float = 180) -> str:
        """The command line with `args`: its stdout (stderr passes through)."""
        done = subprocess.run(
            ["bash", str(self.script), *args],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            timeout=timeout,
        )
        return done.stdout

    def start(self) -> None:
        self._started(self.manager.start())

    def start_replica_of(self, primary: "Cluster") -> None:
        """Make this a streaming replica of the running `primary` (pg_basebackup -R), or
        start it again when it already is one."""
        self._started(self.manager.replica(primary.data_dir))

    def _started(self, database_url: str) -> None:
        url = urlsplit(database_url)
        self.app_user, self.app_password = url.username or "", url.password or ""
        admin = urlsplit(self.manager.admin_url())
        self.host = parse_qs(admin.query)["host"][0]

    def stop(self) -> None:
        self.manager.stop()

    def destroy(self) -> None:
        self.manager.destroy()

    def app_dsn(self, dbname: str) -> str:
        """The service role's URL for one database of this cluster."""
        return (
            f"postgresql://{self.app_user}:{self.app_password}@{self.app_host}:{self.port}/{dbname}"
        )

    def admin_dsn(self, dbname: str) -> str:
        """The superuser's URL: the private socket, peer authentication, no password."""
        return f"postgresql://{self.user}@/{dbname}?host={quote(self.host)}&port={self.port}"


def new_cluster() -> Cluster:
    return Cluster(data_dir=new_data_dir())


@contextmanager
def watched(cluster: Cluster) -> Iterator[Cluster]:
    """`cluster` removed however this process ends: a watchdog in a session of its own
    (tests/cluster_watchdog.py) removes it if this process dies without doing so."""
    dog = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster_watchdog", str(os.getpid()),
         str(cluster.data_dir), str(cluster.port)],
        cwd=REPO, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield cluster
    finally:
        dog.terminate()
        dog.wait()


def remove_cluster(cluster: Cluster) -> None:
    """Stops and deletes this cluster only, then its temp dir."""
    try:
        cluster.destroy()
    finally:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


@cache
def psql_path() -> Path:
    """The psql of the PostgreSQL the clusters run (Debian keeps it beside the server)."""
    return server_bindir(os.environ) / "psql"


def psql(dsn: str, *args: str, stdin: str | None = None) -> str:
    """Run psql (no psqlrc, stop at the first error) and return its output."""
    done = subprocess.run(
        [str(psql_path()), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, *args],
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
    )
    return done.stdout


BOUNCER_SCRIPT = REPO / "db" / "pgbouncer.sh"


@contextmanager
def bouncer(cluster: Cluster, *, pool_size: int, query_wait_timeout: float = 3) -> Iterator[str]:
    """PgBouncer in transaction pooling mode in front of `cluster` (db/pgbouncer.sh), with
    `pool_size` server connections per database: yields its "host:port"."""
    directory = new_data_dir("inventory-bouncer-")
    port = free_port()
    env = {
        **os.environ,
        "INVENTORY_BOUNCER_DIR": str(directory),
        "INVENTORY_BOUNCER_PORT": str(port),
        "INVENTORY_BOUNCER_POOL_SIZE": str(pool_size),
        "INVENTORY_BOUNCER_QUERY_WAIT_TIMEOUT": str(query_wait_timeout),
        "INVENTORY_PG_PORT": str(cluster.port),
        "INVENTORY_APP_PASSWORD": cluster.app_password,
    }

    def run(command: str) -> None:
        subprocess.run(
            ["bash", str(BOUNCER_SCRIPT), command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=300,
        )

    run("start")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        try:
            run("stop")
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def via(dsn: str, address: str) -> str:
    """`dsn` with its host and port replaced by `address` ("host:port")."""
    url = urlsplit(dsn)
    credentials = url.netloc.rpartition("@")[0]
    return url._replace(netloc=f"{credentials}@{address}").geturl()

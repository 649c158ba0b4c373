"""Throwaway PostgreSQL clusters for tests, run by db/cluster.sh (which handles root)."""

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO / "db" / "cluster.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A private cluster; its attributes are what pytest-postgresql's depends_on reads."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    user: str = "postgres"
    password: str = ""
    app_user: str = "inventory_app"
    app_password: str = ""
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None

    def _run(self, command: str) -> str:
        env = {
            **os.environ,
            "INVENTORY_DATA_DIR": str(self.data_dir),
            "INVENTORY_PG_PORT": str(self.port),
            "INVENTORY_PG_FAST": "1",
        }
        done = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), command],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            timeout=180,
        )
        return done.stdout

    def start(self) -> None:
        for line in self._run("start").splitlines():
            key, _, value = line.partition("=")
            if key in {"DATABASE_URL", "ADMIN_DATABASE_URL"}:
                url = urlsplit(value)
                if key == "DATABASE_URL":
                    self.app_user, self.app_password = url.username or "", url.password or ""
                else:
                    self.user, self.password = url.username or "", url.password or ""

    def stop(self) -> None:
        self._run("stop")

    def app_dsn(self, dbname: str) -> str:
        """The service role's URL for one database of this cluster."""
        return f"postgresql://{self.app_user}:{self.app_password}@{self.host}:{self.port}/{dbname}"

    def admin_dsn(self, dbname: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"


def new_cluster() -> Cluster:
    return Cluster(data_dir=Path(tempfile.mkdtemp(prefix="inventory-test-")))


def remove_cluster(cluster: Cluster) -> None:
    try:
        cluster.stop()
    finally:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


@cache
def psql_path() -> Path:
    """The psql of the PostgreSQL the clusters run (Debian keeps it beside the server)."""
    bindir = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "bindir"], stdout=subprocess.PIPE, text=True, check=True
    ).stdout.strip()
    return Path(bindir) / "psql"


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

"""One PostgreSQL server: initdb, pg_ctl start/stop/status/reload, pg_basebackup."""

import logging
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from app.cluster.commands import run
from app.cluster.errors import ClusterError
from app.cluster.osuser import OsUser

log = logging.getLogger("app.cluster")

# Throwaway test clusters only: a crash can lose or corrupt data, which a test never keeps.
_FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _locale() -> str:
    """C.UTF-8 where the system has it: byte-order collation (stable across OS upgrades)
    with UTF-8 character classes."""
    done = run(["locale", "-a"], echo=False) if shutil.which("locale") else None
    names = {n.strip().lower().replace("-", "") for n in (done.stdout if done else "").split()}
    return "C.UTF-8" if "c.utf8" in names else "C"


@dataclass(frozen=True)
class Server:
    bindir: Path
    user: OsUser
    pgdata: Path
    log_file: Path
    # Throwaway test clusters: no fsync (INVENTORY_PG_FAST=1). Never the service's default.
    fast: bool = False

    def _tool(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").is_file()

    @property
    def is_replica(self) -> bool:
        return (self.pgdata / "standby.signal").is_file()

    def init(self, port: int) -> None:
        log.info("initialising a new cluster in %s", self.pgdata)
        # No password file: the superuser gets none (app/cluster/auth.py).
        self.user.run(
            [
                self._tool("initdb"), "-D", str(self.pgdata), "-U", "postgres",
                "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8",
                f"--locale={_locale()}", "--no-instructions",
                *(["--no-sync"] if self.fast else []),
            ],
            what="initdb",
        )  # fmt: skip
        # TCP on loopback only. The socket directory is given at each start (-k), as it
        # depends on where the data dir is; '' here keeps a server started by hand off
        # /var/run/postgresql. The port is also given at each start.
        conf = (
            "\n# inventory-api (app/cluster)\n"
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"
        )
        self.user.write(self.pgdata / "postgresql.conf", conf, append=True)

    def running(self) -> bool:
        if not self.initialized:
            return False
        return self.user.quietly([self._tool("pg_ctl"), "status", "-D", str(self.pgdata)])

    def _pid_line(self, number: int) -> str:
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        return lines[number - 1].strip() if len(lines) >= number else ""

    def running_port(self) -> int:
        """The port the running server listens on (line 4 of postmaster.pid)."""
        return int(self._pid_line(4))

    def running_socket_dir(self) -> Path | None:
        """Its unix socket directory (line 5), None when it has none."""
        line = self._pid_line(5)
        return Path(line) if line else None

    def start(self, port: int, socket_dir: Path) -> None:
        options = f"-p {port} -k '{socket_dir}'" + (f" {_FAST}" if self.fast else "")
        log.info("starting PostgreSQL on 127.0.0.1:%s (log: %s)", port, self.log_file)
        started = self.user.run(
            [
                self._tool("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file),
                "-w", "-t", "60", "-o", options, "start",
            ]
        )  # fmt: skip
        if started.returncode == 0:
            return
        end = self._log_tail()
        if "could not bind" in end or "Address already in use" in end:
            raise ClusterError(
                f"port {port} on 127.0.0.1 is already taken by another program; set "
                "INVENTORY_PG_PORT to a free port"
            )
        raise ClusterError(f"PostgreSQL did not start; the end of {self.log_file}:\n{end}")

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def stop(self, mode: str = "fast") -> subprocess.CompletedProcess[str]:
        pg_ctl = [self._tool("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60"]
        return self.user.run([*pg_ctl, "stop"])

    def reload(self) -> None:
        self.user.run([self._tool("pg_ctl"), "-D", str(self.pgdata), "reload"], what="reload")

    def copy_from(self, socket_dir: Path, port: int) -> None:
        """Make pgdata a streaming replica of the server on `socket_dir`:`port`
        (pg_basebackup -R writes standby.signal and primary_conninfo). It streams over that
        private socket as the superuser, by peer authentication: no replication password."""
        log.info(
            "copying the primary on 127.0.0.1:%s into %s (pg_basebackup -R)", port, self.pgdata
        )
        self.user.run(
            [
                self._tool("pg_basebackup"), "-h", str(socket_dir), "-p", str(port),
                "-U", "postgres", "-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast",
                *(["--no-sync"] if self.fast else []),
            ],
            what="pg_basebackup",
        )  # fmt: skip

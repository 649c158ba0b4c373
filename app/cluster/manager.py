"""A private cluster in a data dir: start, stop, status, replica, destroy."""

import logging
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote

from app.cluster import auth, binaries, envfile
from app.cluster.commands import run
from app.cluster.errors import ClusterError
from app.cluster.files import DeployFiles
from app.cluster.layout import Layout
from app.cluster.lock import exclusive
from app.cluster.osuser import OsUser
from app.cluster.server import Server, port_in_use

DEFAULT_PORT = 54320

log = logging.getLogger("app.cluster")

_CREATE_DATABASE = """\
SELECT 'CREATE DATABASE inventory'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'inventory')
\\gexec
"""


class Cluster:
    """The cluster of one data dir, its server on 127.0.0.1:`port`.

    Nothing happens on construction. Every method that changes the cluster holds the data
    dir's lock, so several processes (uvicorn workers) may call them at once. As root the
    server runs as the OS user postgres; otherwise as the caller.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int = DEFAULT_PORT,
        fast: bool = False,
        files: DeployFiles | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not 1 <= port <= 65535:
            raise ClusterError(f"INVENTORY_PG_PORT={port} is not a port number")
        self.layout = Layout(Path(os.path.abspath(data_dir)))
        self.port = port
        self.fast = fast
        self.files = files or DeployFiles.default()
        self.environ = os.environ if environ is None else environ
        self.user = OsUser.for_server()

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, *, data_dir: str | None = None
    ) -> "Cluster":
        """The cluster the environment names: INVENTORY_DATA_DIR (default: .data in the
        checkout, or in the current directory for an installed copy), INVENTORY_PG_PORT
        (54320), INVENTORY_PG_FAST=1 (throwaway test clusters: no fsync), PG_BINDIR."""
        environ = os.environ if environ is None else environ
        files = DeployFiles.default()
        default_dir = files.root / ".data" if files.in_checkout else Path(".data")
        port_text = environ.get("INVENTORY_PG_PORT") or str(DEFAULT_PORT)
        if not port_text.isdigit():
            raise ClusterError(f"INVENTORY_PG_PORT={port_text} is not a port number")
        return cls(
            data_dir or environ.get("INVENTORY_DATA_DIR") or default_dir,
            port=int(port_text),
            fast=environ.get("INVENTORY_PG_FAST") == "1",
            files=files,
            environ=environ,
        )

    @property
    def data_dir(self) -> Path:
        return self.layout.data_dir

    # -- making and starting -----------------------------------------------------------------

    def _open(self) -> None:
        """Create the data dir and resolve it (symlinks name nothing: the path's hash does)."""
        self.layout.data_dir.mkdir(parents=True, exist_ok=True)
        self.layout = Layout(self.layout.data_dir.resolve())

    def _server(self, bindir: Path) -> Server:
        return Server(bindir, self.user, self.layout.pgdata, self.layout.log_file, self.fast)

    def start(self) -> str:
        """Initialise (the first time), start, create database inventory and apply
        db/roles.sql + schema.sql when they changed (db/migrate.sh); return the service
        role's DATABASE_URL, also written to the env file. Never installs anything."""
        bindir = binaries.server_bindir(self.environ)
        self.user.check()
        self._open()
        with exclusive(self.layout.lock_file):
            self.layout.prepare(self.user)
            server = self._server(bindir)
            if not server.running() and port_in_use(self.port):
                raise ClusterError(
                    f"port {self.port} on 127.0.0.1 is already taken by another program; set "
                    "INVENTORY_PG_PORT to a free port"
                )
            password = envfile.read_password(self.layout.env_file)
            legacy = envfile.is_legacy(self.layout.env_file)
            if password is None:
                # The superuser can always (re)set it: a lost env file costs a new password.
                password = secrets.token_hex(16)
                if server.initialized:
                    log.info(
                        "%s is missing: the service role gets a new password", self.layout.env_file
                    )
            if not server.initialized:
                envfile.write(self.layout.env_file, password, self.port)
                server.init(self.port)
            socket_dir = self.layout.ensure_socket_dir(self.user)
            auth_changed = auth.write(self.layout.pgdata, self.user)
            port = self._run(server, socket_dir, auth_changed)
            # A streaming replica gets its schema, roles and passwords from its primary.
            if not server.is_replica:
                self._set_up_database(bindir, socket_dir, port, password, legacy=legacy)
            envfile.write(self.layout.env_file, password, port)
            return envfile.database_url(password, port)

    def _run(self, server: Server, socket_dir: Path, auth_changed: bool) -> int:
        """Start the server, or keep the running one; return its port."""
        if not server.running():
            server.start(self.port, socket_dir)
            return self.port
        port = server.running_port()
        if server.running_socket_dir() != socket_dir:
            # Superuser access goes through that socket only; a server started by an
            # earlier release has none, so it is restarted once (clients reconnect).
            log.info(
                "restarting PostgreSQL on 127.0.0.1:%s to open its private socket %s",
                port,
                socket_dir,
            )
            server.stop()
            server.start(port, socket_dir)
            return port
        log.info("already running on 127.0.0.1:%s", port)
        if port != self.port:
            log.warning(
                "running on port %s, not INVENTORY_PG_PORT=%s; stop it to change ports",
                port,
                self.port,
            )
        if auth_changed:
            server.reload()
        return port

    def _admin_psql(self, bindir: Path, socket_dir: Path, port: int) -> list[str]:
        return [
            str(binaries.psql(bindir)), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(socket_dir), "-p", str(port), "-U", "postgres",
        ]  # fmt: skip

    def _set_up_database(
        self, bindir: Path, socket_dir: Path, port: int, password: str, *, legacy: bool
    ) -> None:
        # client_min_messages=warning: idempotent SQL raises "already exists" notices.
        env = {
            **self.environ,
            "PGCONNECT_TIMEOUT": "10",
            "PGOPTIONS": "-c client_min_messages=warning",
        }
        psql = self._admin_psql(bindir, socket_dir, port)
        run(
            [*psql, "-d", "postgres"],
            input=_CREATE_DATABASE,
            env=env,
            what="creating database inventory",
        )
        if legacy:
            run(
                [*psql, "-d", "postgres", "-c", "ALTER ROLE postgres PASSWORD NULL"],
                env=env,
                what="removing the superuser's password",
            )
            log.info(
                "removed the superuser's password (an earlier release set one): superuser "
                "access is now only over %s",
                socket_dir,
            )
        # roles.sql and schema.sql only when they changed since the last apply; the service
        # role's password from the environment, never on a command line.
        migrate_env = {
            **self.environ,
            "PGHOST": str(socket_dir),
            "PGPORT": str(port),
            "PGUSER": "postgres",
            "PGDATABASE": "inventory",
            "PGCONNECT_TIMEOUT": "10",
            "PSQL": str(binaries.psql(bindir)),
            "INVENTORY_APP_PASSWORD": password,
        }
        run(["bash", str(self.files.migrate)], env=migrate_env, what="db/migrate.sh")

    def replica(self, primary_dir: str | os.PathLike[str]) -> str:
        """Make this data dir a streaming replica of the running cluster of `primary_dir`
        (pg_basebackup -R the first time), start it; return its DATABASE_URL (the primary's
        service role and password: roles are replicated with the data)."""
        primary = Layout(Path(primary_dir).resolve())
        if not primary.data_dir.is_dir():
            raise ClusterError("usage: db/cluster.sh replica <the primary's data dir>")
        bindir = binaries.server_bindir(self.environ)
        self.user.check()
        self._open()
        if self.data_dir == primary.data_dir:
            raise ClusterError("a cluster cannot be its own replica")
        source = self._server_of(primary, bindir)
        if not (primary.pgdata / "postmaster.pid").is_file():
            raise ClusterError(f"the primary ({primary.data_dir}) is not running; start it first")
        source_socket = source.running_socket_dir()
        password = envfile.read_password(primary.env_file)
        if password is None or source_socket is None:
            raise ClusterError(f"no service role password in {primary.env_file}")
        with exclusive(self.layout.lock_file):
            self.layout.prepare(self.user)
            server = self._server(bindir)
            socket_dir = self.layout.ensure_socket_dir(self.user)
            if not server.initialized:
                server.copy_from(source_socket, source.running_port())
            if not server.is_replica:
                raise ClusterError(f"{server.pgdata} is not a replica (no standby.signal)")
            auth.write(server.pgdata, self.user)
            if server.running():
                port = server.running_port()
                log.info("already running on 127.0.0.1:%s", port)
            else:
                port = self.port
                server.start(port, socket_dir)
            envfile.write(self.layout.env_file, password, port)
            return envfile.database_url(password, port)

    def _server_of(self, layout: Layout, bindir: Path) -> Server:
        return Server(bindir, self.user, layout.pgdata, layout.log_file, self.fast)

    # -- looking at it -----------------------------------------------------------------------

    def _existing(self) -> Server | None:
        """The server of an existing data dir (nothing is created), None when there is none
        or no PostgreSQL is installed to run it."""
        if not self.data_dir.is_dir():
            return None
        self.layout = Layout(self.data_dir.resolve())
        try:
            bindir = binaries.find_bindir(self.environ)
        except ClusterError:
            return None
        return None if bindir is None else self._server(bindir)

    def status(self) -> int | None:
        """The port it runs on, None when it is not running."""
        server = self._existing()
        if server is None or not server.running():
            return None
        return server.running_port()

    def stop(self) -> bool:
        """Fast shutdown; False when it was not running (which is fine)."""
        server = self._existing()
        if server is None or not server.running():
            log.info("not running (%s)", self.data_dir)
            return False
        with exclusive(self.layout.lock_file):
            log.info("stopping PostgreSQL (%s)", self.data_dir)
            server.stop()
        return True

    def env_text(self) -> str:
        """The env file: DATABASE_URL=... of the service role."""
        if not self.layout.env_file.is_file():
            raise ClusterError(f"no cluster at {self.data_dir} yet; run: db/cluster.sh start")
        return self.layout.env_file.read_text()

    def _running(self) -> tuple[Server, Path, int]:
        server = self._existing()
        if server is None or not server.initialized:
            raise ClusterError(f"no cluster at {self.data_dir} yet; run: db/cluster.sh start")
        if not server.running():
            raise ClusterError(f"not running ({self.data_dir}); run: db/cluster.sh start")
        socket_dir = server.running_socket_dir()
        if socket_dir is None:
            raise ClusterError(
                "the server was started by an earlier release, without the superuser's "
                "socket; run db/cluster.sh start once"
            )
        return server, socket_dir, server.running_port()

    def admin_url(self) -> str:
        """The superuser's libpq URL: the private unix socket, peer authentication, no
        password (only the server's OS user and root get in)."""
        _, socket_dir, port = self._running()
        return f"postgresql://postgres@/inventory?host={quote(str(socket_dir))}&port={port}"

    def psql_argv(self, args: list[str]) -> list[str]:
        """psql as the superuser on database inventory, with `args`."""
        server, socket_dir, port = self._running()
        psql = str(binaries.psql(server.bindir))
        return [
            psql,
            "-h",
            str(socket_dir),
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "inventory",
            *args,
        ]

    # -- deleting it -------------------------------------------------------------------------

    def destroy(self, *, confirm: Callable[[list[Path]], bool] | None = None) -> bool:
        """Stop this data dir's cluster and delete it, data and all: pgdata (wherever it was
        relocated to), postgres.log, env, the socket directory, and the data dir itself when
        that leaves it empty. `confirm` is asked with what would be deleted (None: delete).
        False when there was nothing to delete."""
        server = self._existing() if self.data_dir.is_dir() else None
        targets = self.layout.targets()
        if not targets:
            log.info("no cluster at %s; nothing to destroy", self.data_dir)
            return False
        if confirm is not None and not confirm(targets):
            raise ClusterError("nothing deleted")
        pgdata = self.layout.pgdata
        if not self.layout.link.is_symlink() and self.layout.owns_relocated_dir:
            # Its data dir (and so the link) may be gone while the server still runs there.
            pgdata = self.layout.relocated_dir / "pgdata"
        bindir = server.bindir if server else binaries.find_bindir(self.environ)
        if self.data_dir.is_dir():
            with exclusive(self.layout.lock_file):
                self._delete(bindir, pgdata, targets)
        else:
            self._delete(bindir, pgdata, targets)
        return True

    def _delete(self, bindir: Path | None, pgdata: Path, targets: list[Path]) -> None:
        if bindir is not None and (pgdata / "PG_VERSION").is_file():
            server = Server(bindir, self.user, pgdata, pgdata.parent / "postgres.log")
            if server.running():
                log.info("stopping PostgreSQL (%s)", self.data_dir)
                if server.stop().returncode != 0:
                    server.stop("immediate")
        # A pgdata that holds something other than a cluster was not made here: left alone.
        if pgdata.is_dir() and not (pgdata / "PG_VERSION").is_file() and any(pgdata.iterdir()):
            raise ClusterError(f"{pgdata} is not a PostgreSQL data directory; nothing deleted")
        socket_dir = self.layout.socket_dir(self.user)
        log.info("deleting the cluster of %s: %s", self.data_dir, " ".join(map(str, targets)))
        self.layout.delete(targets, socket_dir)


def install_server(environ: Mapping[str, str] | None = None) -> Path:
    """The server's bindir, installed with apt-get first where missing (as root on
    Debian/Ubuntu). Only for the explicit set-up commands, never the service."""
    return binaries.install_server(os.environ if environ is None else environ)

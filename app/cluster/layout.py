"""The data dir: where the cluster, its log, env file and superuser socket live.

pgdata/ (the cluster), postgres.log (mode 0600), env (mode 0600), socket/ (the superuser's
socket; elsewhere when the path is too long for a socket). As root, when the OS user postgres
cannot enter the data dir (a checkout under /root, a mktemp -d directory), pgdata lives in
/var/lib/inventory-api/<hash of the data dir path>, linked from the data dir; every start
says so, and only `destroy` ever deletes it.
"""

import contextlib
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from app.cluster.errors import ClusterError
from app.cluster.osuser import OsUser

RELOCATE_ROOT = Path("/var/lib/inventory-api")
SOCKET_RUN_ROOT = Path("/run/inventory-api")
# A unix socket path holds at most ~107 bytes: <dir>/.s.PGSQL.<port>.
_SOCKET_DIR_MAX = 100 - len("/.s.PGSQL.65535")

log = logging.getLogger("app.cluster")


def path_hash(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Layout:
    """The paths of one data dir (absolute, symlinks resolved: the hash names it)."""

    data_dir: Path

    @property
    def env_file(self) -> Path:
        return self.data_dir / "env"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / ".lock"

    @property
    def link(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def pgdata(self) -> Path:
        """The cluster's directory; relocated (root only), a link to a path we wrote."""
        if self.link.is_symlink():
            return Path(os.readlink(self.link))
        return self.link

    @property
    def log_file(self) -> Path:
        return self.pgdata.parent / "postgres.log"

    @property
    def relocated_dir(self) -> Path:
        return RELOCATE_ROOT / path_hash(self.data_dir)

    @property
    def owns_relocated_dir(self) -> bool:
        owner = self.relocated_dir / "owner"
        return owner.is_file() and owner.read_text().strip() == str(self.data_dir)

    # -- making it ---------------------------------------------------------------------------

    def prepare(self, server: OsUser) -> None:
        """Make pgdata and the log, reachable by the server's user (relocating as root when a
        parent directory is closed to it) and the log private to that user."""
        if server.is_root:
            if not self.link.exists() and not self.link.is_symlink():
                self.data_dir.chmod(self.data_dir.stat().st_mode | 0o011)
                if not server.can_enter(self.data_dir):
                    self._relocate()
            elif not self.link.is_symlink():
                # Ours to open up (traverse, not list); its ancestors are not.
                self.data_dir.chmod(self.data_dir.stat().st_mode | 0o011)
            if self.link.is_symlink():
                self._explain_relocation(server)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        if server.is_root:
            server.own(self.pgdata)
            self.pgdata.chmod(0o700)
            server.own(self.log_file)
            if not server.can_enter(self.pgdata):
                raise ClusterError(
                    f"user postgres cannot reach {self.pgdata} (a parent directory is closed "
                    "to it); move the data dir or set INVENTORY_DATA_DIR"
                )
        # The log holds statements, role names and client addresses: the server's user only.
        self.log_file.chmod(0o600)

    def _relocate(self) -> None:
        target = self.relocated_dir
        if target.exists():
            owner_file = target / "owner"
            owner = owner_file.read_text().strip() if owner_file.is_file() else ""
            if owner != str(self.data_dir):
                raise ClusterError(
                    f"{target} exists and does not belong to {self.data_dir} (its owner file "
                    f"says '{owner or 'nothing'}'); left alone. Set INVENTORY_DATA_DIR to "
                    "another path"
                )
            # Never deleted for us: whatever it holds was someone's data at this same path.
            log.info(
                "reusing the cluster kept in %s for an earlier data dir at this same path", target
            )
        target.mkdir(parents=True, exist_ok=True)
        RELOCATE_ROOT.chmod(0o755)
        target.chmod(0o755)
        (target / "owner").write_text(f"{self.data_dir}\n")
        for name in ("pgdata", "postgres.log"):
            link = self.data_dir / name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target / name)

    def _explain_relocation(self, server: OsUser) -> None:
        """Said on every start of a relocated cluster, so nobody wonders where the data went."""
        blocked = self._first_blocked(server) or f"a parent directory of {self.data_dir}"
        lines = [
            f"NOTE: this cluster's data is in {self.pgdata.parent}, not in {self.data_dir}:",
            "  PostgreSQL refuses to run as root, and the OS user postgres that runs it cannot "
            f"enter {blocked}.",
            f"  {self.data_dir}/pgdata and postgres.log link there. Nothing removes it but "
            "you, when you no longer need the data:",
            f"    INVENTORY_DATA_DIR={self.data_dir} db/cluster.sh destroy --yes",
            "  To keep the data in the checkout instead, use a checkout (or "
            "INVENTORY_DATA_DIR) that postgres can enter.",
        ]
        # Clusters of data dirs that are gone are listed, never removed: someone's data.
        for kept in sorted(RELOCATE_ROOT.glob("*/owner")):
            owner = kept.read_text().strip()
            if not Path(owner).exists():
                lines.append(
                    f"  {kept.parent} belongs to {owner}, which no longer exists; left alone "
                    f"(to delete it: INVENTORY_DATA_DIR={owner} db/cluster.sh destroy --yes)"
                )
        for line in lines:
            log.warning("%s", line)

    def _first_blocked(self, server: OsUser) -> Path | None:
        """The first directory on the way to the data dir that the server's user cannot enter."""
        for path in [*reversed(self.data_dir.parents), self.data_dir]:
            if not server.can_enter(path):
                return path
        return None

    # -- the superuser's socket --------------------------------------------------------------

    def socket_dir(self, server: OsUser) -> Path:
        """Beside pgdata, or a short private directory when that path is too long."""
        beside = self.pgdata.parent / "socket"
        if len(str(beside)) <= _SOCKET_DIR_MAX:
            return beside
        if server.is_root:
            return SOCKET_RUN_ROOT / path_hash(self.data_dir)
        runtime = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
        base = Path(runtime if len(runtime) <= 50 else "/tmp")
        return base / f"inventory-api-{os.geteuid()}-{path_hash(self.data_dir)}"

    def ensure_socket_dir(self, server: OsUser) -> Path:
        """The socket directory, made private (0700) to the server's user."""
        path = self.socket_dir(server)
        if "'" in str(path):
            raise ClusterError(f"the socket directory {path} must not contain a single quote")
        if path.is_symlink():
            raise ClusterError(f"{path} is a symlink; refusing to put the superuser's socket there")
        if server.is_root:
            if path.parent == SOCKET_RUN_ROOT:
                SOCKET_RUN_ROOT.mkdir(parents=True, exist_ok=True)
                SOCKET_RUN_ROOT.chmod(0o755)
            path.mkdir(exist_ok=True)
            server.own(path)
        else:
            # Its parent exists (the data dir, XDG_RUNTIME_DIR or /tmp).
            if not path.is_dir():
                path.mkdir(mode=0o700)
            # /tmp is shared: a directory someone else made there is not ours to use.
            if path.stat().st_uid != os.geteuid():
                raise ClusterError(
                    f"{path} belongs to another user; refusing to put the superuser's socket there"
                )
        path.chmod(0o700)
        return path

    # -- deleting it -------------------------------------------------------------------------

    def targets(self) -> list[Path]:
        """What `destroy` deletes: this data dir's cluster, log and env file, and its
        relocated directory (which may outlive the data dir)."""
        found = [
            p
            for p in (self.link, self.data_dir / "postgres.log", self.env_file)
            if p.exists() or p.is_symlink()
        ]
        if self.owns_relocated_dir:
            found.append(self.relocated_dir)
        return found

    def delete(self, targets: list[Path], socket_dir: Path) -> None:
        for target in targets:
            if target.is_symlink() or target.is_file():
                target.unlink()
            else:
                shutil.rmtree(target, ignore_errors=True)
        inside = (self.data_dir, self.relocated_dir)
        if not any(socket_dir.is_relative_to(d) for d in inside):
            shutil.rmtree(socket_dir, ignore_errors=True)
        if self.data_dir.is_dir():
            shutil.rmtree(self.data_dir / "socket", ignore_errors=True)
            for leftover in [self.lock_file, *self.data_dir.glob(".env.*")]:
                leftover.unlink(missing_ok=True)
            # Not empty: something of the user's, left alone.
            with contextlib.suppress(OSError):
                self.data_dir.rmdir()

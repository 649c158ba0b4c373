"""The OS user the server runs as: postgres when we are root (PostgreSQL refuses root)."""

import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.cluster.commands import run
from app.cluster.errors import ClusterError

ROOT_SERVER_USER = "postgres"


@dataclass(frozen=True)
class OsUser:
    """Who runs the server; `is_root` when we are root and it is another user."""

    name: str
    is_root: bool

    @classmethod
    def for_server(cls) -> "OsUser":
        if os.geteuid() == 0:
            return cls(ROOT_SERVER_USER, True)
        return cls(pwd.getpwuid(os.geteuid()).pw_name, False)

    def check(self) -> None:
        """Raise ClusterError when root cannot hand the server to its user."""
        if not self.is_root:
            return
        if shutil.which("runuser") is None:
            raise ClusterError(
                "as root the server runs as user postgres, which needs runuser (util-linux)"
            )
        try:
            pwd.getpwnam(self.name)
        except KeyError:
            raise ClusterError(
                "as root the server runs as the OS user postgres, which does not exist "
                "(the postgresql package creates it)"
            ) from None

    def argv(self, args: Sequence[str]) -> list[str]:
        """`args` as a command run by this user."""
        if self.is_root:
            return ["runuser", "-u", self.name, "--", *args]
        return list(args)

    def run(
        self, args: Sequence[str], *, what: str | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """commands.run as this user (from `/`: never left in a directory it cannot read)."""
        return run(self.argv(args), what=what, input=input)

    def quietly(self, args: Sequence[str]) -> bool:
        """Run `args` as this user, output discarded: True when it exited 0."""
        return run(self.argv(args), echo=False).returncode == 0

    def can_enter(self, path: Path) -> bool:
        if not self.is_root:
            return os.access(path, os.X_OK)
        return self.quietly(["test", "-x", str(path)])

    def own(self, path: Path) -> None:
        """Give `path` to this user (root only: otherwise it is ours already)."""
        if self.is_root:
            entry = pwd.getpwnam(self.name)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def write(self, path: Path, text: str, *, append: bool = False) -> None:
        """Write `path` as this user: root never writes through a path that user controls."""
        tee = ["tee", *(["-a"] if append else []), str(path)]
        run(self.argv(tee), what=f"writing {path}", input=text, echo=False)

"""Finding the PostgreSQL server binaries, and installing them where the user asked to."""

import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from app.cluster.commands import run
from app.cluster.errors import ClusterError

# Debian/Ubuntu keep the server off PATH, one directory per major version; Homebrew's
# postgresql@NN is keg-only, so it is not on PATH either.
DEBIAN_ROOT = Path("/usr/lib/postgresql")
HOMEBREW_ROOTS = (Path("/opt/homebrew/opt"), Path("/usr/local/opt"))

log = logging.getLogger("app.cluster")

_HOW_TO_INSTALL = """\
  Debian/Ubuntu:  sudo apt-get install postgresql
  Fedora:         sudo dnf install postgresql-server
  macOS:          brew install postgresql@15
or set PG_BINDIR to the directory that holds initdb."""


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def _has_server(bindir: Path) -> bool:
    return os.access(bindir / "initdb", os.X_OK)


def find_bindir(
    environ: Mapping[str, str],
    *,
    debian_root: Path = DEBIAN_ROOT,
    homebrew_roots: tuple[Path, ...] = HOMEBREW_ROOTS,
) -> Path | None:
    """The directory holding initdb and pg_ctl, or None. PG_BINDIR, when set, is the only
    candidate (ClusterError when it holds no initdb); else pg_config's, the highest version
    Debian or Homebrew keeps, or initdb's on PATH (Fedora, a linked Homebrew formula)."""
    given = environ.get("PG_BINDIR")
    if given:
        if _has_server(Path(given)):
            return Path(given)
        raise missing_server(f"PG_BINDIR={given} holds no initdb.")
    path = environ.get("PATH")
    pg_config = shutil.which("pg_config", path=path)
    if pg_config:
        done = run([pg_config, "--bindir"], echo=False)
        if done.returncode == 0 and _has_server(Path(done.stdout.strip())):
            return Path(done.stdout.strip())
    versioned = sorted(debian_root.glob("*/bin"), key=lambda d: _version(d.parent), reverse=True)
    for root in homebrew_roots:
        kegs = root.glob("postgresql@*")
        versioned += [k / "bin" for k in sorted(kegs, key=lambda k: _version(k), reverse=True)]
    for bindir in versioned:
        if _has_server(bindir):
            return bindir
    initdb = shutil.which("initdb", path=path)
    return Path(initdb).parent if initdb else None


def missing_server(reason: str, *, installing: bool = False) -> ClusterError:
    if installing:
        advice = f"{reason} Install it and run again:"
    else:
        # start runs in the service itself (uvicorn without DATABASE_URL): a web worker must
        # never run a package manager, so only the explicit set-up commands install.
        advice = (
            f"{reason} Starting the database never installs it. Run ./run.sh once (as root "
            "on Debian/Ubuntu it installs PostgreSQL), or install it yourself:"
        )
    return ClusterError(f"{advice}\n{_HOW_TO_INSTALL}", exit_status=2)


_NOT_INSTALLED = "the PostgreSQL server (initdb, pg_ctl) is not installed."


def server_bindir(environ: Mapping[str, str]) -> Path:
    """find_bindir, or ClusterError saying how to install the server (never installs)."""
    bindir = find_bindir(environ)
    if bindir is None:
        raise missing_server(_NOT_INSTALLED)
    return bindir


def install_server(environ: Mapping[str, str]) -> Path:
    """find_bindir, installing the server with apt-get when it is missing and we are root on
    Debian/Ubuntu (the explicit set-up commands only: ./run.sh, db/cluster.sh bindir)."""
    bindir = find_bindir(environ)
    if bindir is not None:
        return bindir
    apt_get = shutil.which("apt-get", path=environ.get("PATH"))
    if os.geteuid() != 0 or apt_get is None:
        raise missing_server(_NOT_INSTALLED, installing=True)
    log.info("PostgreSQL server not found; installing it: apt-get install postgresql")
    env = {**environ, "DEBIAN_FRONTEND": "noninteractive"}
    what = "apt-get install postgresql"
    run([apt_get, "update", "-q"], what=what, env=env, stream=True)
    run([apt_get, "install", "-y", "-q", "postgresql"], what=what, env=env, stream=True)
    bindir = find_bindir(environ)
    if bindir is None:
        raise missing_server(_NOT_INSTALLED, installing=True)
    return bindir


def psql(bindir: Path) -> Path:
    """The psql beside the server (Debian keeps it there), else psql on PATH."""
    if os.access(bindir / "psql", os.X_OK):
        return bindir / "psql"
    found = shutil.which("psql")
    if found is None:
        raise ClusterError("psql not found (install the PostgreSQL client)")
    return Path(found)

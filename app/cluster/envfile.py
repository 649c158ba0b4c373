"""The data dir's env file: the service role's DATABASE_URL, readable by its owner only."""

import os
import re
import tempfile
from pathlib import Path

APP_ROLE = "inventory_app"
DATABASE = "inventory"
_PASSWORD = re.compile(rf"^DATABASE_URL=postgresql://{APP_ROLE}:([^@]*)@", re.MULTILINE)
# Written by an earlier release, when the superuser had a password it handed out.
_LEGACY = re.compile(r"^ADMIN_DATABASE_URL=", re.MULTILINE)


def database_url(password: str, port: int) -> str:
    """The service role's URL: TCP on loopback with its password."""
    return f"postgresql://{APP_ROLE}:{password}@127.0.0.1:{port}/{DATABASE}"


def read_password(env_file: Path) -> str | None:
    """The service role's password from `env_file`, None when there is none."""
    try:
        found = _PASSWORD.search(env_file.read_text())
    except FileNotFoundError:
        return None
    return found.group(1) if found and found.group(1) else None


def is_legacy(env_file: Path) -> bool:
    """True when `env_file` still holds the superuser's URL of an earlier release."""
    return env_file.is_file() and _LEGACY.search(env_file.read_text()) is not None


def write(env_file: Path, password: str, port: int) -> None:
    """Replace `env_file` atomically with one line, DATABASE_URL=..., mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=env_file.parent, prefix=".env.")  # mkstemp: mode 0600
    with os.fdopen(fd, "w") as out:
        out.write(f"DATABASE_URL={database_url(password, port)}\n")
    os.replace(tmp, env_file)

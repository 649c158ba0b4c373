"""One manager at a time per data dir."""

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.cluster.errors import ClusterError


@contextmanager
def exclusive(path: Path, *, timeout: float = 300) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) while the block runs.

    Two processes starting at once (say two uvicorn workers) must not both initdb, both
    pg_ctl start or both apply the schema. flock: released when its holder dies, and the
    descriptor is not inherited, so a server started meanwhile never holds it.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"timed out waiting for the lock {path}") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)

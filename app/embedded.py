"""The embedded default database: a private cluster started by db/cluster.sh."""

import asyncio
import os
import sys
from pathlib import Path

CLUSTER_SCRIPT = Path(__file__).resolve().parent.parent / "db" / "cluster.sh"


class EmbeddedDatabaseError(RuntimeError):
    """db/cluster.sh could not provide a database; the message says what to do."""


async def start_embedded(data_dir: str | None) -> str:
    """Start (or join) the embedded cluster and return the service role's DATABASE_URL.

    db/cluster.sh holds a lock while it initialises and starts the cluster and applies the
    schema (only when it changed), so several workers starting at once share one cluster;
    it outlives them (`./run.sh stop` ends it). It never installs software: a missing
    PostgreSQL server raises EmbeddedDatabaseError saying to run `./run.sh` once.
    Runs as a subprocess, so the event loop is never blocked while PostgreSQL starts.
    """
    if not CLUSTER_SCRIPT.exists():
        raise EmbeddedDatabaseError(
            f"DATABASE_URL is not set and {CLUSTER_SCRIPT} is missing: set DATABASE_URL."
        )
    env = dict(os.environ)
    if data_dir:
        env["INVENTORY_DATA_DIR"] = data_dir
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(CLUSTER_SCRIPT),
        "start",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    messages = stderr.decode(errors="replace")
    # The script's own account (initdb, start, migrate, relocation notes) belongs in the log.
    sys.stderr.write(messages)
    if process.returncode != 0:
        said = [line.removeprefix("cluster.sh: ") for line in messages.splitlines()[-8:]]
        raise EmbeddedDatabaseError(
            f"db/cluster.sh start failed (exit {process.returncode}): " + " ".join(said).strip()
        )
    for line in stdout.decode().splitlines():
        if line.startswith("DATABASE_URL="):
            return line.removeprefix("DATABASE_URL=")
    raise EmbeddedDatabaseError("db/cluster.sh start printed no DATABASE_URL.")

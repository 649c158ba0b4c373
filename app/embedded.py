"""The embedded default database: the private cluster of app.cluster, started in-process."""

import asyncio

from app.cluster import Cluster, ClusterError


class EmbeddedDatabaseError(RuntimeError):
    """The embedded cluster could not be started; the message says what to do."""


async def start_embedded(data_dir: str | None) -> str:
    """Start (or join) the embedded cluster and return the service role's DATABASE_URL.

    The cluster manager holds the data dir's lock while it initialises and starts the
    cluster and applies the schema (only when it changed), so several workers starting at
    once share one cluster; it outlives them (`./run.sh stop` ends it). It never installs
    software: a missing PostgreSQL server raises EmbeddedDatabaseError saying to run
    `./run.sh` once. Runs in a worker thread: the event loop is never blocked meanwhile.
    """
    try:
        cluster = Cluster.from_environment(data_dir=data_dir)
        return await asyncio.to_thread(cluster.start)
    except ClusterError as e:
        raise EmbeddedDatabaseError(f"the embedded PostgreSQL did not start: {e}") from e

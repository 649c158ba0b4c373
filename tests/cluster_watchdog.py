"""Removes a test cluster once the process that made it is gone without removing it.

A run killed (Ctrl+C twice, a CI timeout, SIGKILL) runs no teardown: its servers kept
running, some at full CPU finishing a statement nobody would read, and their data dirs
stayed in /tmp. tests.cluster.watched starts this next to each session's cluster.

    python -m tests.cluster_watchdog PID DATA_DIR PORT
"""

import os
import sys
import time
from pathlib import Path

from tests.cluster import Cluster, remove_cluster

POLL_SECONDS = 1.0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process has the number now: ours is gone
    return True


def main(pid: int, data_dir: Path, port: int) -> None:
    while alive(pid):
        time.sleep(POLL_SECONDS)
    if data_dir.exists():
        remove_cluster(Cluster(data_dir=data_dir, port=port))


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))

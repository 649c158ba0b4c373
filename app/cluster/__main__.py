"""The cluster's command line (db/cluster.sh is its front).

  start           initialise (first time), start, create database inventory, apply
                  db/roles.sql and schema.sql when they changed; stdout is one line, the
                  service role's DATABASE_URL=...
  stop            fast shutdown; fine when not running
  status          exit 0 when running, 3 when not
  env             print the env file (DATABASE_URL=...)
  psql [args]     psql as the superuser on database inventory
  admin-url       the superuser's libpq URL: the private unix socket, no password
  bindir          print the server binary directory; the one command that installs
                  PostgreSQL (apt-get, as root on Debian/Ubuntu) when it is missing
  destroy --yes   stop this data dir's cluster and delete it, data and all
  replica DIR     make this data dir a streaming replica of the running cluster of data dir
                  DIR (pg_basebackup -R), start it; stdout as start

Environment: INVENTORY_DATA_DIR (default <repo>/.data), INVENTORY_PG_PORT (default 54320),
INVENTORY_PG_FAST=1 (throwaway test clusters only: no fsync), PG_BINDIR (server binaries).
Everything but the answer goes to stderr.
"""

import logging
import os
import sys
from pathlib import Path

from app.cluster.errors import ClusterError
from app.cluster.manager import Cluster, install_server

USAGE = (
    "usage: db/cluster.sh start|stop|status|env|psql [psql args...]|admin-url|bindir|"
    "replica <primary data dir>|destroy --yes"
)
NOT_RUNNING = 3


def _ask(targets: list[Path]) -> bool:
    listed = " ".join(map(str, targets))
    if not sys.stdin.isatty():
        raise ClusterError(
            f"destroy deletes the cluster and all its data ({listed}); to confirm, run: "
            "db/cluster.sh destroy --yes"
        )
    sys.stderr.write(f"Delete the database cluster for good ({listed})? Type yes: ")
    sys.stderr.flush()
    return sys.stdin.readline().strip() == "yes"


def run(args: list[str]) -> int:
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "bindir":
        print(install_server())
        return 0
    cluster = Cluster.from_environment()
    if command == "start":
        print(f"DATABASE_URL={cluster.start()}")
    elif command == "replica":
        if not rest:
            raise ClusterError("usage: db/cluster.sh replica <the primary's data dir>")
        print(f"DATABASE_URL={cluster.replica(rest[0])}")
    elif command == "stop":
        cluster.stop()
    elif command == "status":
        port = cluster.status()
        if port is None:
            print(f"not running ({cluster.data_dir})")
            return NOT_RUNNING
        print(f"running on 127.0.0.1:{port} ({cluster.data_dir})")
    elif command == "env":
        sys.stdout.write(cluster.env_text())
    elif command == "admin-url":
        print(cluster.admin_url())
    elif command == "psql":
        argv = cluster.psql_argv(rest)
        sys.stdout.flush()
        os.execv(argv[0], argv)
    elif command == "destroy":
        cluster.destroy(confirm=None if rest[:1] == ["--yes"] else _ask)
    else:
        print(USAGE, file=sys.stderr)
        return 2
    return 0


def main() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cluster: %(message)s"))
    logger = logging.getLogger("app.cluster")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        code = run(sys.argv[1:])
    except ClusterError as e:
        print(f"cluster: {e}", file=sys.stderr)
        code = e.exit_status
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()

"""Who may log in: pg_hba.conf and pg_ident.conf, written at every start.

The service role logs in over TCP on 127.0.0.1 with its password. The superuser postgres has
no password at all: it is reached only over the private unix socket, by the OS user that
runs the server and by root (peer authentication through the map inventory_admin). So
nothing `start` prints, and no file, hands out superuser access.
"""

from pathlib import Path

from app.cluster.osuser import OsUser

HBA = """\
# Written by the cluster manager (db/cluster.sh) at every start; edits here are overwritten.
# The superuser has no password: only over the private unix socket, as an OS user of the map
# inventory_admin (pg_ident.conf), by peer authentication.
local   all           postgres                 peer map=inventory_admin
local   replication   postgres                 peer map=inventory_admin
local   all           all                      reject
# Every other role: TCP on loopback with its password (SCRAM). The superuser never over TCP.
host    all           postgres    127.0.0.1/32 reject
host    all           all         127.0.0.1/32 scram-sha-256
"""


def ident(server: OsUser) -> str:
    """The OS users that may log in as the superuser over the private socket."""
    # Root can become postgres anyway; mapping it lets root's own tools (psql, tests) in.
    admins = [server.name, "root"] if server.is_root else [server.name]
    lines = [
        "# Written by the cluster manager (db/cluster.sh) at every start; edits here are "
        "overwritten.",
        "# The OS users that may log in as the superuser over the private socket.",
        *(f"inventory_admin  {name}  postgres" for name in admins),
    ]
    return "\n".join(lines) + "\n"


def write(pgdata: Path, server: OsUser) -> bool:
    """Write both files where they differ from ours; True when one had to be rewritten
    (a running server then needs a reload)."""
    changed = False
    for name, text in (("pg_hba.conf", HBA), ("pg_ident.conf", ident(server))):
        path = pgdata / name
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = None
        if current != text:
            server.write(path, text)
            changed = True
    server.run(["chmod", "600", str(pgdata / "pg_hba.conf"), str(pgdata / "pg_ident.conf")])
    return changed

"""db/migrate.sh: the schema applied once per change, by one applier, on real clusters."""

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.cluster import (
    Cluster,
)
from tests.deploy_helpers import (
    bindir,
    run_script,
)


def applied(cluster: Cluster) -> list[str]:
    """The digests db/migrate.sh recorded, oldest first."""
    with psycopg.connect(cluster.admin_dsn("inventory")) as conn:
        rows = conn.execute("SELECT sha256 FROM inventory_deploy.schema_applied ORDER BY id")
        return [digest for (digest,) in rows]


def digest_of(checkout: Path) -> str:
    files = (checkout / "db" / "roles.sql", checkout / "schema.sql")
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


# ------------------------------------------------------------------------------------------
# The schema is applied once per change, by one applier


@pytest.mark.slow
@pytest.mark.alone
def test_unchanged_schema_is_not_reapplied_so_a_restart_never_waits_for_table_locks(
    scratch: Cluster,
) -> None:
    scratch.start()
    assert applied(scratch) == [digest_of(scratch.script.parent.parent)]
    # A long import holds products: applying schema.sql (CREATE OR REPLACE TRIGGER) would
    # queue behind it, and every write behind that.
    with psycopg.connect(scratch.admin_dsn("inventory")) as holder:
        holder.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        again = run_script(scratch, "start", timeout=60)
        elapsed = time.monotonic() - began
        holder.rollback()
    assert again.returncode == 0, again.stderr
    assert elapsed < 20
    assert "unchanged" in again.stderr and "nothing applied" in again.stderr
    assert again.stdout.startswith("DATABASE_URL=postgresql://inventory_app:")
    assert len(applied(scratch)) == 1


@pytest.mark.slow
def test_changed_schema_is_applied_once_by_concurrent_starts(scratch: Cluster) -> None:
    scratch.start()
    checkout = scratch.script.parent.parent
    with (checkout / "schema.sql").open("a") as schema:
        schema.write("\nCREATE TABLE IF NOT EXISTS deploy_probe (id integer);\n")

    # Several workers of `uvicorn --workers N` start (or join) the cluster at once.
    results: list[subprocess.CompletedProcess[str]] = []
    workers = [
        threading.Thread(target=lambda: results.append(run_script(scratch, "start")))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert sum("migrate: applied" in r.stderr for r in results) == 1
    assert applied(scratch)[1:] == [digest_of(checkout)]
    with psycopg.connect(scratch.admin_dsn("inventory")) as conn:
        assert conn.execute("SELECT to_regclass('deploy_probe') IS NOT NULL").fetchone() == (True,)

    # roles.sql is part of the digest too.
    with (checkout / "db" / "roles.sql").open("a") as roles:
        roles.write("\n-- a change\n")
    scratch.start()
    assert applied(scratch)[2:] == [digest_of(checkout)]


@pytest.mark.slow
def test_a_failed_apply_records_nothing_and_the_next_start_applies_again(
    scratch: Cluster,
) -> None:
    scratch.start()
    checkout = scratch.script.parent.parent
    good = (checkout / "schema.sql").read_text()
    (checkout / "schema.sql").write_text(good + "\nCREATE TABLE broken (;\n")
    failed = run_script(scratch, "start")
    assert failed.returncode != 0
    assert "db/migrate.sh failed" in failed.stderr
    assert len(applied(scratch)) == 1

    (checkout / "schema.sql").write_text(good + "\nCREATE TABLE IF NOT EXISTS fixed (id int);\n")
    scratch.start()
    assert applied(scratch)[1:] == [digest_of(checkout)]


@pytest.mark.slow
def test_migrate_sets_a_changed_service_password_without_reapplying(scratch: Cluster) -> None:
    """As compose's migrate service runs it: libpq's environment, INVENTORY_APP_PASSWORD."""
    scratch.start()
    password = "new 'pass\\word' ü"
    done = subprocess.run(
        ["bash", str(scratch.script.parent / "migrate.sh")],
        env={
            **os.environ,
            "PGHOST": scratch.host,
            "PGPORT": str(scratch.port),
            "PGUSER": "postgres",
            "PGDATABASE": "inventory",
            "PSQL": str(bindir() / "psql"),
            "INVENTORY_APP_PASSWORD": password,
        },
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing applied" in done.stderr
    assert password not in done.stderr
    with psycopg.connect(
        host=scratch.app_host,
        port=scratch.port,
        dbname="inventory",
        user="inventory_app",
        password=password,
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("inventory_app",)
    assert len(applied(scratch)) == 1

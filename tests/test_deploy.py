"""Deploying: the cluster manager's command line (db/cluster.sh), db/migrate.sh, ./run.sh and
compose, on real clusters and processes."""

import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from app.config import Settings
from app.embedded import start_embedded
from tests.cluster import (
    CLUSTER_SCRIPT,
    REPO,
    Cluster,
    free_port,
    make_checkout,
    new_data_dir,
    remove_cluster,
)

# The release before the current work: its schema.sql is what a live database holds when the
# new one is applied. Move it forward when a release is cut.
PREVIOUS_RELEASE = "52af07a"
RELOCATE_ROOT = Path("/var/lib/inventory-api")
IS_ROOT = os.geteuid() == 0
SERVER_UID = pwd.getpwnam("postgres").pw_uid if IS_ROOT else os.geteuid()


# ------------------------------------------------------------------------------------------
# Helpers


def bindir() -> Path:
    out = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "bindir"], stdout=subprocess.PIPE, text=True, check=True
    )
    return Path(out.stdout.strip())


def git_show(path: str) -> str:
    """`path` as of PREVIOUS_RELEASE, or a skip saying why it cannot be had."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous release's files come from git history")
    done = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{PREVIOUS_RELEASE}:{path}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"commit {PREVIOUS_RELEASE} is not in this checkout's history (a shallow clone or an "
            f"export?): {done.stderr.strip()}"
        )
    return done.stdout


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own, run from a copied checkout (its schema.sql may be edited)."""
    cluster = Cluster(
        data_dir=new_data_dir(), script=make_checkout(tmp_path / "checkout") / "db" / "cluster.sh"
    )
    try:
        yield cluster
    finally:
        remove_cluster(cluster)


def applied(cluster: Cluster) -> list[str]:
    """The digests db/migrate.sh recorded, oldest first."""
    with psycopg.connect(cluster.admin_dsn("inventory")) as conn:
        rows = conn.execute("SELECT sha256 FROM inventory_deploy.schema_applied ORDER BY id")
        return [digest for (digest,) in rows]


def digest_of(checkout: Path) -> str:
    files = (checkout / "db" / "roles.sql", checkout / "schema.sql")
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def run_script(
    cluster: Cluster, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """cluster.sh with stderr captured (what it says to the user), whatever its exit status."""
    return subprocess.run(
        ["bash", str(cluster.script), *args],
        env=cluster.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


# ------------------------------------------------------------------------------------------
# Every later schema.sql must be an upgrade of the previous release's


def snapshot(dsn: str, tables: dict[str, list[str]]) -> dict[str, Any]:
    """Every row of `tables` (only the listed columns, as text, in primary key order) and
    where every sequence stands."""
    with psycopg.connect(dsn) as conn:
        rows = {
            table: conn.execute(
                f"SELECT {', '.join(f'{c}::text' for c in columns)} FROM {table} ORDER BY 1, 2"
            ).fetchall()
            for table, columns in tables.items()
        }
        sequences = {
            f"{schema}.{name}": value
            for schema, name, value in conn.execute(
                "SELECT schemaname, sequencename, last_value FROM pg_sequences"
            )
        }
    return {"rows": rows, "sequences": sequences}


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    """The same rows and sequences; what a later schema adds (columns, tables, sequences) is
    not compared, as it was not there before."""
    assert after["rows"] == before["rows"]
    assert {name: after["sequences"].get(name) for name in before["sequences"]} == (
        before["sequences"]
    )


def public_tables(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        found: dict[str, list[str]] = {}
        for table, column in conn.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c"
            " JOIN information_schema.tables t USING (table_schema, table_name)"
            " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'"
            " ORDER BY c.table_name, c.ordinal_position"
        ):
            found.setdefault(table, []).append(column)
    return found


def test_previous_release_schema_upgrades_with_every_row_intact(
    pg_server: Cluster, tmp_path: Path
) -> None:
    old_schema = tmp_path / "previous-schema.sql"
    old_schema.write_text(git_show("schema.sql"))
    dbname = f"upgrade_{uuid.uuid4().hex[:12]}"
    admin = pg_server.admin_dsn(dbname)
    psql = [str(bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", admin]

    def apply(schema: Path) -> None:
        done = subprocess.run(
            [*psql, "-f", str(schema)], stderr=subprocess.PIPE, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr

    def schema_dump() -> str:
        out = subprocess.run(
            [str(bindir() / "pg_dump"), "--schema-only", "-d", admin],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        # pg_dump 15.14+ brackets its output with a random \restrict key.
        return re.sub(r"^\\(un)?restrict .*$", "", out, flags=re.MULTILINE)

    with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    try:
        apply(old_schema)
        # Rows as the service writes them: as inventory_app, through the old schema.
        with psycopg.connect(pg_server.app_dsn(dbname)) as app:
            for sku, name, description, price, quantity in [
                ("UP-1", "Blue mug", "Stoneware, 300 ml", "19.99", 5),
                ("up-2.b_c", "Ünïcødé — ☕", None, "0.00", 0),
                ("UP-3", "Crate", 'line one\nline two, "quoted"', "9999999999.99", 2147483647),
            ]:
                app.execute(
                    "INSERT INTO products (sku, name, description, price, quantity)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (sku, name, description, price, quantity),
                )
            app.execute("UPDATE products SET name = 'Red mug' WHERE sku = 'UP-1'")
            app.execute(
                "WITH p AS (UPDATE products SET quantity = quantity + d.delta"
                "           FROM (VALUES ('UP-1', 10), ('UP-2.B_C', 3)) AS d (sku, delta)"
                "           WHERE lower(products.sku) = lower(d.sku)"
                "           RETURNING products.id, d.delta, products.quantity)"
                " INSERT INTO stock_movements (product_id, delta, reason, note, quantity_after)"
                " SELECT id, delta, 'received', 'PO 4711', quantity FROM p"
            )
            app.execute(
                "INSERT INTO idempotency_keys (scope, key, request_hash, status, headers, body)"
                " VALUES ('POST /products', 'k-1', %s, 201, %s, %s),"
                "        ('POST /products/{sku}/adjustments', 'k 2', %s, NULL, NULL, NULL)",
                (
                    hashlib.sha256(b"one").digest(),
                    '{"content-type": "application/json", "location": "/products/UP-1"}',
                    b'{"sku": "UP-1"}\x00\xff',
                    hashlib.sha256(b"two").digest(),
                ),
            )
        tables = public_tables(admin)
        before = snapshot(admin, tables)
        assert all(before["rows"][t] for t in ("products", "stock_movements", "idempotency_keys"))

        apply(REPO / "schema.sql")
        assert_unchanged(before, snapshot(admin, tables))
        once = schema_dump()

        apply(REPO / "schema.sql")
        assert_unchanged(before, snapshot(admin, tables))
        assert schema_dump() == once

        # The service still works on the upgraded rows.
        with psycopg.connect(pg_server.app_dsn(dbname)) as app:
            app.execute("INSERT INTO products (sku, name, price) VALUES ('UP-4', 'After', 1)")
            app.execute("SELECT adjust_stock('UP-3', -1, 'sold')")
    finally:
        with psycopg.connect(pg_server.admin_dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


# ------------------------------------------------------------------------------------------
# Who gets which credentials; what the files let others read


@pytest.mark.slow
def test_start_hands_out_only_the_service_role(scratch: Cluster) -> None:
    out = scratch.run("start")
    assert re.fullmatch(
        rf"DATABASE_URL=postgresql://inventory_app:[0-9a-f]{{32}}@127\.0\.0\.1:{scratch.port}"
        r"/inventory\n",
        out,
    ), out
    env_file = scratch.data_dir / "env"
    assert env_file.read_text() == out
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    scratch.start()
    with psycopg.connect(scratch.admin_dsn("inventory")) as conn:
        assert conn.execute(
            "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'"
        ).fetchone() == (True,)
    # No password could open the superuser over TCP.
    with pytest.raises(psycopg.OperationalError, match="rejects"):
        psycopg.connect(
            host="127.0.0.1", port=scratch.port, user="postgres", password="x", dbname="inventory"
        )
    socket_dir = Path(scratch.host).stat()
    assert stat.S_IMODE(socket_dir.st_mode) == 0o700
    assert socket_dir.st_uid == SERVER_UID


@pytest.mark.slow
async def test_the_embedded_path_gives_the_app_the_service_role_only(
    scratch: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in scratch.env().items():
        monkeypatch.setenv(key, value)
    url = await start_embedded(str(scratch.data_dir))
    assert urlsplit(url).username == "inventory_app"
    assert urlsplit(url).hostname == "127.0.0.1"


@pytest.mark.slow
def test_the_lifespan_under_uvloop_returns_once_the_cluster_runs(tmp_path: Path) -> None:
    """uvicorn's workers run uvloop; the cluster is started from a worker thread of its
    loop, and the server it leaves running must hold none of the worker's descriptors."""
    pytest.importorskip("uvloop", reason="uvicorn[standard] brings uvloop")
    data_dir = new_data_dir()
    env = {**os.environ, "INVENTORY_PG_PORT": str(free_port()), "INVENTORY_PG_FAST": "1"}
    try:
        started = subprocess.run(
            [
                sys.executable, "-c",
                "import uvloop; from app.embedded import start_embedded; "
                f"print(uvloop.run(start_embedded({str(data_dir)!r})))",
            ],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith("postgresql://inventory_app:")
    finally:
        subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "destroy", "--yes"],
            env={**env, "INVENTORY_DATA_DIR": str(data_dir)}, check=False,
        )  # fmt: skip
        shutil.rmtree(data_dir, ignore_errors=True)


def test_cluster_log_and_data_files_are_private(pg_server: Cluster) -> None:
    log = pg_server.data_dir / "postgres.log"
    assert log.stat().st_size > 0
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert log.stat().st_uid == SERVER_UID
    pgdata = pg_server.data_dir / "pgdata"
    for path in [pgdata, *pgdata.rglob("*")]:
        info = path.lstat()
        # 0600/0640 files, 0700/0750 directories: nothing for others, no group writes.
        assert stat.S_IMODE(info.st_mode) & 0o027 == 0, path
        assert info.st_uid == SERVER_UID, path


def test_test_clusters_are_not_relocated(pg_server: Cluster) -> None:
    pgdata = pg_server.data_dir / "pgdata"
    assert pgdata.is_dir() and not pgdata.is_symlink()


@pytest.mark.slow
def test_a_cluster_of_the_previous_release_is_taken_over(tmp_path: Path) -> None:
    files = {name: git_show(name) for name in ("db/cluster.sh", "db/roles.sql", "schema.sql")}
    old = Cluster(
        data_dir=new_data_dir(), script=make_checkout(tmp_path / "old", files) / "db" / "cluster.sh"
    )
    new = Cluster(data_dir=old.data_dir, port=old.port)
    try:
        urls = dict(line.split("=", 1) for line in old.run("start").splitlines())
        with psycopg.connect(urls["ADMIN_DATABASE_URL"]) as conn:
            conn.execute("INSERT INTO products (sku, name, price) VALUES ('OLD-1', 'Kept', 1)")

        # Still running, as the old script left it: the new one takes it over in place.
        new.start()
        assert (old.data_dir / "env").read_text().splitlines() == [
            f"DATABASE_URL={urls['DATABASE_URL']}"
        ]
        with psycopg.connect(new.admin_dsn("inventory")) as conn:
            assert conn.execute("SELECT name FROM products").fetchall() == [("Kept",)]
            assert conn.execute(
                "SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'"
            ).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(urls["ADMIN_DATABASE_URL"])
        with psycopg.connect(urls["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT count(*) FROM products").fetchone() == (1,)
        assert stat.S_IMODE((old.data_dir / "postgres.log").stat().st_mode) == 0o600
    finally:
        remove_cluster(new)


# ------------------------------------------------------------------------------------------
# No package manager from the app; no deleted data


def unshare_works() -> bool:
    if not IS_ROOT or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], stderr=subprocess.DEVNULL).returncode == 0


def without_postgres(command: list[str]) -> list[str]:
    """`command` in a private mount namespace where the installed server is hidden."""
    hide = " && ".join(
        f"mount -t tmpfs none {d}"
        for d in ("/usr/lib/postgresql", "/opt/homebrew/opt", "/usr/local/opt")
        if Path(d).is_dir()
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{hide} && exec "$@"',
            "sh", *command]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not unshare_works(), reason="needs root and unshare -m to hide the server")
def test_the_app_never_runs_the_package_manager_and_says_to_run_run_sh(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "apt-get-calls"
    # Records its calls; "installs" nothing, so the server stays missing.
    (fake / "apt-get").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" = update ] && exit 0\nexit 1\n'
    )
    (fake / "apt-get").chmod(0o755)
    data_dir = new_data_dir()
    env = {
        **os.environ,
        "PATH": f"{fake}:/usr/sbin:/usr/bin:/sbin:/bin",
        "INVENTORY_PG_PORT": str(free_port()),
    }
    env.pop("PG_BINDIR", None)
    try:
        # What the lifespan of `uvicorn app.main:app` does without DATABASE_URL.
        lifespan = subprocess.run(
            without_postgres([
                sys.executable, "-c",
                "import asyncio; from app.embedded import start_embedded; "
                f"asyncio.run(start_embedded({str(data_dir)!r}))",
            ]),
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert lifespan.returncode != 0
        assert "EmbeddedDatabaseError" in lifespan.stderr
        assert "Run ./run.sh once" in lifespan.stderr
        assert not calls.exists(), calls.read_text()

        # The explicit set-up command does install.
        setup = subprocess.run(
            without_postgres(["bash", str(CLUSTER_SCRIPT), "bindir"]),
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert setup.returncode != 0  # the fake apt-get fails
        assert "install -y -q postgresql" in calls.read_text()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="only root relocates a cluster")
def test_relocation_is_announced_every_start_and_never_deletes_another_cluster() -> None:
    closed = Path(tempfile.mkdtemp(prefix="inventory-closed-"))  # 0700: postgres cannot enter
    cluster = Cluster(data_dir=closed / "data")
    relocated = RELOCATE_ROOT / hashlib.sha256(str(cluster.data_dir).encode()).hexdigest()[:16]
    # The cluster of another checkout whose data dir is gone: not ours to delete.
    foreign = RELOCATE_ROOT / f"test-foreign-{uuid.uuid4().hex[:8]}"
    (foreign / "pgdata").mkdir(parents=True)
    (foreign / "pgdata" / "PG_VERSION").write_text("15\n")
    (foreign / "owner").write_text(f"/nonexistent/{uuid.uuid4().hex}/data\n")
    try:
        for _ in range(2):
            started = run_script(cluster, "start")
            assert started.returncode == 0, started.stderr
            assert f"data is in {relocated}, not in {cluster.data_dir}" in started.stderr
            assert f"cannot enter {closed}" in started.stderr
            assert f"INVENTORY_DATA_DIR={cluster.data_dir} db/cluster.sh destroy --yes" in (
                started.stderr
            )
            assert f"{foreign} belongs to" in started.stderr and "left alone" in started.stderr
        assert (relocated / "pgdata" / "PG_VERSION").is_file()
        assert (foreign / "pgdata" / "PG_VERSION").is_file()

        refused = run_script(cluster, "destroy")
        assert refused.returncode != 0
        assert "--yes" in refused.stderr
        assert (relocated / "pgdata" / "PG_VERSION").is_file()

        destroyed = run_script(cluster, "destroy", "--yes")
        assert destroyed.returncode == 0, destroyed.stderr
        assert not relocated.exists()
        assert not cluster.data_dir.exists()
        assert closed.is_dir()
        assert (foreign / "pgdata" / "PG_VERSION").is_file()
    finally:
        run_script(cluster, "destroy", "--yes")
        shutil.rmtree(foreign, ignore_errors=True)
        shutil.rmtree(closed, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# ./run.sh: one server per data dir


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


@pytest.mark.slow
def test_a_second_run_sh_is_refused_and_stop_still_stops_the_first(tmp_path: Path) -> None:
    data_dir = new_data_dir()
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "INVENTORY_PG_PORT": str(free_port()),
        "INVENTORY_DATA_DIR": str(data_dir),
        "INVENTORY_PG_FAST": "1",
        "INVENTORY_NO_DOCKER": "1",
        "CI": "true",
    }
    for key in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR", "HOST"):
        env.pop(key, None)
    readyz = f"http://127.0.0.1:{port}/readyz"
    metrics = data_dir / "metrics"

    def run_sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO / "run.sh"), *args], env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(
            ["bash", str(REPO / "run.sh")], env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while get(readyz) != 200:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.5)
        assert get(f"http://127.0.0.1:{port}/healthz") == 200
        counters = sorted(metrics.glob("*.db"))
        assert counters

        second = run_sh()
        assert second.returncode != 0
        assert "the API is already running" in second.stderr
        assert str(data_dir) in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert f"http://127.0.0.1:{port}" in second.stderr

        assert first.poll() is None
        assert get(readyz) == 200
        api_pid = (data_dir / "uvicorn.pid").read_text().strip()
        assert "uvicorn" in Path(f"/proc/{api_pid}/cmdline").read_text()
        assert set(counters) <= set(metrics.glob("*.db"))

        stopped = run_sh("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert first.wait(timeout=30) is not None
        assert get(readyz) == 0
        status = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "status"], env=env, stdout=subprocess.PIPE, text=True
        )
        assert status.returncode == 3, status.stdout
    finally:
        if first.poll() is None:
            first.terminate()
            first.wait(timeout=30)
        run_sh("destroy", "--yes")
        # Whatever run.sh did, the cluster must not outlive its data dir.
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "destroy", "--yes"], env=env, check=False)
        shutil.rmtree(data_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Compose and the image


def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads docker-compose.yml")
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def test_compose_migrate_runs_the_applier_with_no_password_on_a_command_line() -> None:
    migrate = compose()["services"]["migrate"]
    assert migrate["entrypoint"] == ["bash", "/migrate/db/migrate.sh"]
    assert "command" not in migrate
    mounts = {m["source"]: m["target"] for m in migrate["volumes"]}
    # The repository's layout, so migrate.sh finds the files as it does here.
    assert mounts == {
        "./db/migrate.sh": "/migrate/db/migrate.sh",
        "./db/roles.sql": "/migrate/db/roles.sql",
        "./schema.sql": "/migrate/schema.sql",
    }
    assert all((REPO / source).is_file() for source in mounts)
    assert set(migrate["environment"]) >= {"PGPASSWORD", "INVENTORY_APP_PASSWORD"}


@pytest.mark.parametrize("service", ["api", "api-1", "api-2"])
def test_compose_serves_with_a_token_on_loopback_and_passes_every_setting_through(
    service: str,
) -> None:
    api = compose()["services"][service]
    environment: dict[str, str | None] = api["environment"]
    # Tokens by default (issue 19, finding 8): a token file made on the first start, in a
    # volume every api service shares; no open API unless asked for.
    assert environment["INVENTORY_ALLOW_OPEN"] is None
    assert environment["INVENTORY_API_TOKEN_FILE"] == (
        "${INVENTORY_API_TOKEN_FILE-/srv/tokens/api-token}"
    )
    assert "tokens:/srv/tokens" in api["volumes"]
    assert "tokens" in compose()["volumes"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "mkdir -m 0700 /srv/tokens && chown inventory:inventory /srv/tokens" in dockerfile
    assert all(str(p).startswith("127.0.0.1:") for p in api.get("ports", []))
    # Settings the container gets another way (DATABASE_URL) or has no use for.
    elsewhere = {"database_url", "data_dir", "bench_ceiling"}
    wanted = {f"INVENTORY_{name.upper()}" for name in Settings.model_fields} - {
        f"INVENTORY_{name.upper()}" for name in elsewhere
    }
    assert wanted <= set(environment), wanted - set(environment)


def test_compose_scale_profile_wires_replica_pgbouncer_instances_and_haproxy() -> None:
    services = compose()["services"]
    scale = {name for name, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"replica", "pgbouncer", "api-1", "api-2", "haproxy"}
    password = "${INVENTORY_APP_PASSWORD:-inventory-app}"
    for name in ("api-1", "api-2"):
        env = services[name]["environment"]
        assert (
            env["DATABASE_URL"] == f"postgresql://inventory_app:{password}@pgbouncer:6432/inventory"
        )
        assert env["INVENTORY_PGBOUNCER"] == "1"
        assert env["INVENTORY_LISTEN_DATABASE_URL"].endswith("@db:5432/inventory")
        assert env["INVENTORY_READ_DATABASE_URL"].endswith("@replica:5432/inventory")
    assert "pg_basebackup -h db" in " ".join(services["replica"]["entrypoint"])
    # The primary lets the replica stream (its pg_hba.conf is ours).
    hba = (REPO / "db" / "compose-pg_hba.conf").read_text()
    assert any(line.split()[:3] == ["host", "replication", "postgres"] for line in hba.splitlines())
    assert "hba_file=/etc/inventory/pg_hba.conf" in services["db"]["command"]
    # PgBouncer and HAProxy use the files ./run.sh scale uses, with every variable they read.
    bouncer = services["pgbouncer"]
    dockerfile = (REPO / bouncer["build"]["dockerfile"]).read_text()
    assert "COPY db/pgbouncer.sh" in dockerfile
    assert "!db/pgbouncer.sh" in (REPO / ".dockerignore").read_text().splitlines()
    haproxy = services["haproxy"]
    assert [m["source"] for m in haproxy["volumes"]] == ["./db/haproxy.cfg"]
    used = set(re.findall(r"\$\{(\w+)\}", (REPO / "db" / "haproxy.cfg").read_text()))
    assert used == set(haproxy["environment"])
    assert haproxy["environment"]["INVENTORY_API_1"] == "api-1:8000"
    assert all(str(p).startswith("127.0.0.1:") for p in haproxy["ports"])


def test_haproxy_accepts_its_config() -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(haproxy, os.X_OK):
        pytest.skip("HAProxy is not installed (./run.sh scale installs it)")
    env = {
        **os.environ,
        "INVENTORY_LB_BIND": "127.0.0.1:1",
        "INVENTORY_API_1": "127.0.0.1:2",
        "INVENTORY_API_2": "127.0.0.1:3",
    }
    done = subprocess.run(
        [haproxy, "-c", "-f", str(REPO / "db" / "haproxy.cfg")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_binds_all_interfaces_with_no_open_api_default() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if not line.startswith("#")]
    assert "--host 0.0.0.0" in dockerfile
    assert not any("INVENTORY_ALLOW_OPEN" in line for line in instructions)


def test_no_shell_script_is_left_unexecutable() -> None:
    for script in (
        "run.sh",
        "db/cluster.sh",
        "db/migrate.sh",
        "db/pgbouncer.sh",
        "db/scale.sh",
        ".ci/run",
    ):
        assert os.access(REPO / script, os.X_OK), script

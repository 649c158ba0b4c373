"""docker-compose.yml and the image, checked without a Docker engine: wiring, variables,
HAProxy's configuration."""

import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from app.config import Settings
from tests.cluster import (
    REPO,
)

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

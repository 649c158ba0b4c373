"""SIGTERM: in-flight requests finish, the pool closes, the process exits 0, in bounded time."""

import signal
import threading
import time
from typing import Any

import httpx
import pytest
from psycopg import Connection

from tests.cluster import Cluster
from tests.helpers import SLEEPING, product
from tests.live import live_server

pytestmark = [pytest.mark.slow, pytest.mark.alone]

TOKEN = "shutdown-test-token-9Qe"
GRACE = 10  # --timeout-graceful-shutdown, as in run.sh and the Dockerfile (there: 20)


def test_sigterm_finishes_the_request_in_flight_and_closes_the_pool(
    db: Connection[Any], pg_server: Cluster
) -> None:
    # In this test's database only: inserting SLOW-1 takes two seconds inside PostgreSQL.
    db.execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.sku = 'SLOW-1' THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER slow BEFORE INSERT ON products FOR EACH ROW EXECUTE FUNCTION slow()"
    )
    env = {
        "DATABASE_URL": pg_server.app_dsn(db.info.dbname),
        "INVENTORY_POOL_SIZE": "2",
        "INVENTORY_API_TOKENS": TOKEN,
    }
    with live_server(env, "--timeout-graceful-shutdown", str(GRACE)) as server:
        answers: list[httpx.Response] = []
        slow = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{server.url}/products",
                    json=product("SLOW-1"),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=30,
                )
            )
        )
        slow.start()
        for _ in range(500):  # until the insert is inside pg_sleep (bounded: 5 s)
            if db.execute(SLEEPING).fetchone() == (1,):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the slow insert never started")

        started = time.monotonic()
        code, output = server.terminate_and_wait(timeout=GRACE + 5)
        stopped_after = time.monotonic() - started
        slow.join(timeout=5)

    # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is complete, so the
    # process ends "terminated by SIGTERM" (143 in a shell; Docker and systemd count it as a
    # clean stop), not with 0. The lines before it say the shutdown ran to its end.
    assert code == -signal.SIGTERM, output
    assert "Application shutdown complete." in output
    assert "Finished server process" in output
    assert "Traceback" not in output and '"level": "ERROR"' not in output
    # Statements still waiting in the server (the sequencer's) were cancelled there quietly.
    assert '"logger": "psycopg"' not in output, output
    assert stopped_after < GRACE
    assert [a.status_code for a in answers] == [201]
    assert db.execute("SELECT sku FROM products").fetchall() == [("SLOW-1",)]
    # The pool was closed: no connection of the service is left on the server.
    left = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'inventory_app' AND datname = %s",
        (db.info.dbname,),
    ).fetchone()
    assert left == (0,)
    assert '"request"' in output  # the JSON request log reached stdout
    assert TOKEN not in output

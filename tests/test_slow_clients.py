"""Slow clients cannot hold the service (issue 19, findings 2 and 10): what a client that
reads or sends too slowly costs, and what it leaves in the logs."""

import socket
import time
from typing import Any

import pytest
from psycopg import Connection

from tests.cluster import Cluster
from tests.live import live_server
from tests.test_export import _fill


def _stalled_export(url: str, path: str = "/products", headers: str = "") -> socket.socket:
    """A GET whose client reads the status line, then nothing: its receive buffer is kept
    small, so the server's writes soon wait on it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    assert sock.recv(12).startswith(b"HTTP/1.1 200")
    return sock


@pytest.mark.slow
def test_a_client_that_stops_reading_costs_one_info_line_not_a_traceback(
    postgresql: Connection[Any], pg_server: Cluster, db: Connection[Any]
) -> None:
    _fill(db, 50_000, description_chars=500)  # ~30 MB: far more than the socket buffers
    env = {
        "DATABASE_URL": pg_server.app_dsn(postgresql.info.dbname),
        "INVENTORY_SEND_TIMEOUT_SECONDS": "1",
    }
    with live_server(env) as server:
        sock = _stalled_export(server.url)
        time.sleep(4)
        sock.close()
        _, output = server.terminate_and_wait(timeout=20)

    assert "Traceback" not in output and "exc_info" not in output, output
    [ended] = [line for line in output.splitlines() if "response ended" in line]
    assert '"level": "INFO"' in ended and "took no data for 1 s" in ended

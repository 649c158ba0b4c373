"""A real uvicorn process serving the app, for what only a live server shows."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from tests.cluster import REPO, free_port


@dataclass
class LiveServer:
    process: subprocess.Popen[str]
    url: str

    def terminate_and_wait(self, timeout: float) -> tuple[int, str]:
        """SIGTERM, then the exit code and everything the process printed."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, out


@contextmanager
def live_server(
    env: dict[str, str], *args: str, host: str = "127.0.0.1", probe: str = "127.0.0.1"
) -> Iterator[LiveServer]:
    """uvicorn app.main:app on a free port of `host`, ready (GET /healthz 200 through
    `probe`, the address it is reached on) when yielded."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            host,
            "--port",
            str(port),
            "--no-access-log",
            *args,
        ],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = LiveServer(process, f"http://{probe}:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

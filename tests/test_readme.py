"""README.md's walk-through, run as written against a live server, in order.

The blocks marked `<!-- walkthrough -->` are concatenated into one bash script and run in an
empty directory, with the README's URL pointed at a live uvicorn on this test's database
and `./run.sh psql` at that database. Every `curl` must answer the status its comment
names: the README cannot drift from what the service does.
"""

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest
from psycopg import Connection

from app.config import Settings
from tests.cluster import REPO, Cluster
from tests.live_inprocess import live_server

README_URL = "http://127.0.0.1:8000"
MARK = "<!-- walkthrough -->"
_BLOCK = re.compile(re.escape(MARK) + r"\n```sh\n(.*?)```", re.S)
_STATUS = re.compile(r":\s+([1-5][0-9][0-9])\b")
# Every curl reports its status on stderr, after whatever the README asked it to print.
_PRELUDE = """set -euo pipefail
curl() { command curl -sS -w '%{stderr}STATUS %{http_code}\\n' "$@"; }
./run.sh() {
  [[ ${1:-} == psql ]] || { echo "only ./run.sh psql is part of the walk-through" >&2; return 2; }
  shift
  command psql -X -v ON_ERROR_STOP=1 "$ADMIN_URL" "$@"
}
"""


def walkthrough() -> list[str]:
    return _BLOCK.findall((REPO / "README.md").read_text())


def expected_statuses(blocks: list[str]) -> list[int]:
    """The status each curl must answer: the first `: NNN` in the comment above it."""
    expected = []
    for block in blocks:
        status: int | None = None
        for line in block.splitlines():
            if line.startswith("#"):
                found = _STATUS.search(line)
                if status is None and found:
                    status = int(found.group(1))
            elif re.search(r"(^|\$\()curl ", line):
                assert status is not None, f"no expected status in the comment above: {line}"
                expected.append(status)
                status = None
            elif not line.strip():
                status = None
    return expected


def test_the_walkthrough_is_marked_and_every_curl_names_its_status() -> None:
    blocks = walkthrough()
    assert len(blocks) >= 6
    assert len(expected_statuses(blocks)) >= 20


@pytest.mark.slow
async def test_the_readme_walkthrough_runs_verbatim_against_a_live_server(
    settings: Settings, postgresql: Connection[Any], pg_server: Cluster, tmp_path: Path
) -> None:
    blocks = walkthrough()
    expected = expected_statuses(blocks)
    async with live_server(settings) as url:
        script = _PRELUDE + "\n".join(blocks).replace(README_URL, url)
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=tmp_path,
            env={**os.environ, "ADMIN_URL": pg_server.admin_dsn(postgresql.info.dbname)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)

    output = out.decode() + err.decode()
    assert process.returncode == 0, output
    statuses = [int(s) for s in re.findall(r"^STATUS (\d+)$", err.decode(), re.M)]
    assert statuses == expected, output

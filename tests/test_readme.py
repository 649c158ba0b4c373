"""README.md's walk-through, then docs/api.md's examples and docs/locations.md's day, run
as written against a live server, in order.

The blocks marked `<!-- walkthrough -->` in README.md, then in docs/api.md and
docs/locations.md (each carrying on from the state before it), are concatenated into one
bash script and run in an empty directory, with the README's URL pointed at a live
uvicorn on this test's database and `./run.sh psql` at that database. Every `curl` must
answer the status its comment names, and the JSON object the comment shows after it, if
any, must be in the body: the README cannot drift from what the service does.
"""

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from psycopg import Connection

from app.config import Settings
from tests.cluster import REPO, Cluster
from tests.live_inprocess import live_server

README_URL = "http://127.0.0.1:8000"
MARK = "<!-- walkthrough -->"
_BLOCK = re.compile(re.escape(MARK) + r"\n```sh\n(.*?)```", re.S)
_STATUS = re.compile(r":\s+([1-5][0-9][0-9])\b(?:\s+(\{.*\}))?")
# Every curl reports its status on stderr, after whatever the README asked it to print, and
# leaves that output in $BODIES/<its number> (a file counter: a curl in a pipe runs in a
# subshell).
_PRELUDE = """set -euo pipefail
echo 0 > "$BODIES/count"
curl() {
  local n
  n=$(( $(cat "$BODIES/count") + 1 ))
  echo "$n" > "$BODIES/count"
  command curl -sS -w '%{stderr}STATUS %{http_code}\\n' "$@" | tee "$BODIES/$n"
}
./run.sh() {
  [[ ${1:-} == psql ]] || { echo "only ./run.sh psql is part of the walk-through" >&2; return 2; }
  shift
  command psql -X -v ON_ERROR_STOP=1 "$ADMIN_URL" "$@"
}
"""


PAGES = (REPO / "README.md", REPO / "docs" / "api.md", REPO / "docs" / "locations.md")


def walkthrough() -> list[str]:
    return [block for page in PAGES for block in _BLOCK.findall(page.read_text())]


class Expected(NamedTuple):
    """What a curl must answer: its status, and members its JSON body must have."""

    status: int
    body: dict[str, Any] | None


def expected_answers(blocks: list[str]) -> list[Expected]:
    """Per curl, the first `: NNN` in the comment above it, and the JSON object that
    follows it on that line, if one does."""
    expected = []
    for block in blocks:
        answer: Expected | None = None
        for line in block.splitlines():
            if line.startswith("#"):
                found = _STATUS.search(line)
                if answer is None and found:
                    body = json.loads(found.group(2)) if found.group(2) else None
                    answer = Expected(int(found.group(1)), body)
            elif re.search(r"(^|\$\(|\| *)curl ", line.strip()):
                assert answer is not None, f"no expected status in the comment above: {line}"
                expected.append(answer)
                answer = None
            elif not line.strip():
                answer = None
    return expected


def expected_statuses(blocks: list[str]) -> list[int]:
    return [answer.status for answer in expected_answers(blocks)]


def json_body(output: str) -> Any:
    """The JSON a curl printed, after its headers when it printed them (-i)."""
    if output.startswith("HTTP/"):
        output = re.split(r"\r?\n\r?\n", output, maxsplit=1)[1]
    return json.loads(output)


def test_the_walkthrough_is_marked_and_every_curl_names_its_status() -> None:
    blocks = walkthrough()
    assert len(_BLOCK.findall(PAGES[0].read_text())) >= 3
    answers = expected_answers(blocks)
    assert len(answers) >= 15
    assert sum(answer.body is not None for answer in answers) >= 5


@pytest.mark.slow
async def test_the_readme_walkthrough_runs_verbatim_against_a_live_server(
    settings: Settings, postgresql: Connection[Any], pg_server: Cluster, tmp_path: Path
) -> None:
    blocks = walkthrough()
    expected = expected_answers(blocks)
    bodies = tmp_path / "bodies"
    bodies.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    async with live_server(settings) as url:
        script = _PRELUDE + "\n".join(blocks).replace(README_URL, url)
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=work,
            env={
                **os.environ,
                "ADMIN_URL": pg_server.admin_dsn(postgresql.info.dbname),
                "BODIES": str(bodies),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)

    output = out.decode() + err.decode()
    assert process.returncode == 0, output
    statuses = [int(s) for s in re.findall(r"^STATUS (\d+)$", err.decode(), re.M)]
    assert statuses == [answer.status for answer in expected], output
    for number, answer in enumerate(expected, start=1):
        if answer.body is None:
            continue
        body = json_body((bodies / str(number)).read_text())
        assert {k: body.get(k) for k in answer.body} == answer.body, (number, body)
    # Run from the checkout, the walk-through leaves no file behind.
    assert list(work.iterdir()) == []

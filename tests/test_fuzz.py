"""schemathesis, as an adopting team would run it, against a live server: every check on.

`schemathesis run --checks all` with its four phases (examples, coverage, fuzzing, and the
stateful phase following the document's links) over every operation of the app's own
/openapi.json, against the server open (INVENTORY_ALLOW_OPEN) and with tokens (the token
supplied). Positive data must be accepted and negative data refused, so the document must
say exactly what the server enforces. The summary is printed (pytest -s, or -rP): its
numbers go into the issue's closing note.

FUZZ_EXAMPLES sets the examples per operation (default 100); FUZZ_OUTPUT names a directory
to keep schemathesis' whole report in. Seeded: a run is repeatable.
"""

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from app.config import Settings
from tests.cluster import REPO
from tests.live_inprocess import live_server

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token-4Wt"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
SEED = 13
CONFIGURATIONS = {
    "open": {"allow_open": True},
    "tokens": {"api_tokens": SecretStr(TOKEN)},
}
# Every answer has a body that ends, but for GET /changes/stream: an endless SSE stream,
# which schemathesis would wait on until its request timeout and report as a failure. It
# is the only operation left out; tests/test_change_stream.py covers it on a live server.
ENDLESS = "streamChanges"
# Beyond schemathesis' defaults (2xx, 3xx, 401, 403, 404, 409, 429, 5xx), valid requests
# may get the two other answers that depend on what the server holds, not on the request's
# shape, both declared where they occur: 410 `cursor_expired` (a change-log seq older than
# the retention) and 412 `precondition_failed` (an If-Match that is not the current ETag).
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "410", "412", "429", "5xx"]
"""


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
async def test_schemathesis_with_every_check_finds_nothing(
    settings: Settings, tmp_path: Path, configuration: str
) -> None:
    overrides: dict[str, Any] = {
        **CONFIGURATIONS[configuration],
        # Webhooks get 127.0.0.1 URLs (tests/fuzz_hooks.py): no DNS needed, nothing reached.
        "webhook_allow_private": True,
    }
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    async with live_server(settings.model_copy(update=overrides)) as url:
        args = [
            "--config-file",
            str(config),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--exclude-operation-id",
            ENDLESS,
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
            "--no-color",
        ]
        if configuration == "tokens":
            args += ["--header", f"Authorization: Bearer {TOKEN}"]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "schemathesis.cli",
            *args,
            # Its cache (.schemathesis/) goes to the test's directory, not the repo.
            cwd=tmp_path,
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
                "NO_COLOR": "1",
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await process.communicate())[0].decode()
    if os.environ.get("FUZZ_OUTPUT"):
        kept = Path(os.environ["FUZZ_OUTPUT"], f"schemathesis-{configuration}.txt")
        await asyncio.to_thread(kept.write_text, output)
    summary = output[output.rfind("SUMMARY") :] if "SUMMARY" in output else output[-2000:]
    print(f"\nschemathesis, {configuration} server:\n{summary}")
    assert process.returncode == 0, output
    assert "Failures:" not in output and " passed" in output, output
    # Every operation but the stream was tested, and the stateful phase followed links.
    assert re.search(r"Tested: (\d+)", output) and "Stateful" in output, output

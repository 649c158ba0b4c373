"""Running the PostgreSQL tools: output echoed to stderr, failures raised with their tail."""

import subprocess
import sys
from collections.abc import Mapping, Sequence

from app.cluster.errors import ClusterError


def run(
    argv: Sequence[str],
    *,
    what: str | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    echo: bool = True,
    stream: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion from `/`, with stdin closed (or fed `input`).

    Its stdout and stderr, merged, are returned and (with `echo`) written to our stderr:
    never to our stdout, which carries the command line's answer. With `what`, a non-zero
    exit raises ClusterError naming `what` and quoting the output's last lines. With
    `stream`, the output goes straight to our stderr as it comes (a long apt-get) and is not
    returned. Only fds 0-2 are passed on, so a server the command leaves running holds
    nothing of ours.
    """
    done = subprocess.run(
        list(argv),
        cwd="/",
        env=None if env is None else dict(env),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        stdout=2 if stream else subprocess.PIPE,  # 2: our stderr, whatever sys.stderr is
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        check=False,
    )
    output = done.stdout or ""
    if echo and output:
        sys.stderr.write(output)
        sys.stderr.flush()
    if what is not None and done.returncode != 0:
        said = "see above" if stream else tail(output)
        raise ClusterError(f"{what} failed (exit {done.returncode}): {said}")
    return done


def tail(text: str, lines: int = 8) -> str:
    """The last `lines` non-empty lines of `text`, on one line."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"

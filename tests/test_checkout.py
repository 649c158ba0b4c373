"""What a fresh clone gets: nothing that exists only on the machine where it was committed."""

import posixpath
import shutil
import subprocess

import pytest

from tests.cluster import REPO


def git(*args: str) -> str:
    """git's output in this checkout, or a skip when there is no git history to read."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"not a git checkout (an export or an image?): {done.stderr.strip()}")
    return done.stdout


def tracked_links() -> list[tuple[str, str]]:
    """Every symlink in git's index (mode 120000), with the target it stores."""
    links = []
    for entry in git("ls-files", "-s", "-z").split("\0"):
        if entry.startswith("120000 "):
            meta, path = entry.split("\t", 1)
            target = git("cat-file", "blob", meta.split()[1])
            links.append((path, target))
    return links


def leaves_the_checkout(path: str, target: str) -> bool:
    """Whether a link at `path` (relative to the repository) points at an absolute path or
    outside the repository: on another machine it is dangling, or worse, not."""
    if posixpath.isabs(target):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")


@pytest.mark.parametrize(
    ("path", "target", "leaves"),
    [
        (".venv", "/root/inventory-api/.venv", True),
        ("docs/latest", "../../elsewhere/docs", True),
        ("a/b", "c/../../..", True),
        ("docs/readme", "../README.md", False),
        ("db/current.sql", "roles.sql", False),
    ],
)
def test_a_link_leaves_the_checkout_when_absolute_or_climbing_out(
    path: str, target: str, leaves: bool
) -> None:
    assert leaves_the_checkout(path, target) is leaves


def test_no_tracked_symlink_is_absolute_or_leads_outside_the_repository() -> None:
    # A committed `.venv` link to one machine's folder once made every fresh clone's
    # ./run.sh fail with "File exists".
    assert [(p, t) for p, t in tracked_links() if leaves_the_checkout(p, t)] == []


def test_nothing_tracked_is_ignored_as_local() -> None:
    # .gitignore lists what each machine makes for itself (.venv, .data, caches): a tracked
    # file matching it was committed by accident and would shadow the clone's own.
    assert git("ls-files", "--cached", "--ignored", "--exclude-standard").split() == []

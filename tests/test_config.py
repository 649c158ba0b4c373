"""The settings table of docs/running.md against app/config.py and the repository's scripts."""

import re
import subprocess

import pytest
from pydantic.fields import FieldInfo

from app.config import Settings
from tests.cluster import REPO

DOC = REPO / "docs" / "running.md"
# A row: | `NAME` | default | read by | meaning |
_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \| ([^|]*) \| (.*) \|$")


def settings_table() -> dict[str, tuple[str, str]]:
    """The table under "## Settings": variable -> (default, read by)."""
    text = DOC.read_text()
    section = text[text.index("\n## Settings\n") :]
    section = section[: section.index("\n## ", 1)]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        found = _ROW.match(line)
        if found:
            name, default, readers, _ = found.groups()
            assert name not in rows, f"{name} has two rows"
            rows[name] = (default, readers)
    return rows


def environment_name(name: str, field: FieldInfo) -> str:
    choices = getattr(field.validation_alias, "choices", None)
    upper = [c for c in choices or () if isinstance(c, str) and c.isupper()]
    return upper[0] if upper else f"INVENTORY_{name.upper()}"


def documented_default(value: object) -> str | None:
    """How the table writes a default: the value in backticks, or None for "unset"."""
    if value is None or value is False:
        return None
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def test_every_setting_of_the_app_has_its_row_and_its_default() -> None:
    rows = settings_table()
    read = {environment_name(n, f): f for n, f in Settings.model_fields.items()}

    assert {n for n, (_, readers) in rows.items() if "the app" in readers} == set(read)
    for name, field in read.items():
        default, _ = rows[name]
        expected = documented_default(field.default)
        if expected is None:
            assert default.startswith("unset"), (name, default)
        else:
            assert default.split(" ")[0] == expected, (name, default, expected)


def test_every_variable_the_repository_reads_has_its_row() -> None:
    used = set(
        subprocess.run(
            ["git", "-C", str(REPO), "grep", "-ohE", r"\bINVENTORY_[A-Z0-9_]*[A-Z0-9]\b", "--",
             "app", "db", "bench", "tests", "run.sh", ".ci", "Dockerfile", "docker-compose.yml"],
            capture_output=True, text=True, check=False,
        ).stdout.split()
    )  # fmt: skip
    if not used:
        pytest.skip("not a git checkout: the files to search are git's")
    assert used - set(settings_table()) == set()

"""README.md and docs/: every relative link leads to a file of the repository, and to a
heading of it."""

import re
from pathlib import Path

import pytest

from tests.cluster import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE = re.compile(r"```.*?```", re.S)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", _CODE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_CODE.sub("", page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # another site
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        found = linked.is_file() and REPO in linked.parents
        if found and anchor and linked.suffix == ".md":
            found = anchor in anchors(linked)
        if not found:
            broken.append(target)
    assert broken == []

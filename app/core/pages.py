"""A keyset page cut from what a page query returned."""

from collections.abc import Sequence
from typing import Any


def cut_page(rows: Sequence[Sequence[Any]], limit: int) -> tuple[list[str], int | None] | None:
    """The page from up to `limit` + 1 (json, id) rows of a parent outer-joined to its
    children: None when no row came back (no such parent; a parent without children is one
    row of NULLs), else the first `limit` JSON texts and, when more remain, the id of the
    last one (the next page's cursor)."""
    if not rows:
        return None
    page = [(json, id_) for json, id_ in rows if json is not None]
    more = len(page) > limit
    page = page[:limit]
    return [json for json, _ in page], (int(page[-1][1]) if more else None)

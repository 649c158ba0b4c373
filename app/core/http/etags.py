"""Conditional requests (RFC 9110 13): parsing If-Match / If-None-Match against our ETags.

The ETag itself is computed by PostgreSQL (product_etag() in schema.sql), so that a
conditional write compares it in the same statement that writes. This module only reads
the request headers.
"""

import re
from dataclasses import dataclass

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc excludes only DQUOTE, so a comma may sit
# inside a tag and the list cannot simply be split on commas.
_ENTITY_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


@dataclass(frozen=True)
class TagList:
    """A parsed If-Match / If-None-Match value: `*`, or entity tags with their weakness."""

    any: bool
    tags: tuple[tuple[bool, str], ...]  # (weak, "opaque-tag" with its quotes)


def parse(value: str | None) -> TagList | None:
    """None when the header is absent; otherwise `*` or the tags that parse.

    Unparseable members are dropped: a tag we cannot read matches nothing, which is the
    safe reading for If-Match (412) and the harmless one for If-None-Match (full 200).
    """
    if value is None:
        return None
    if value.strip() == "*":
        return TagList(any=True, tags=())
    tags: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(value):
        match = _ENTITY_TAG.match(value, pos)
        if match is None:
            # Skip to the next comma: one malformed member does not hide the others.
            comma = value.find(",", pos)
            if comma < 0:
                break
            pos = comma + 1
            continue
        tags.append((match.group(1) is not None, match.group(2)))
        pos = match.end()
    return TagList(any=False, tags=tuple(tags))


def none_match(header: str | None, etag: str) -> bool:
    """True when If-None-Match matches the current ETag (weak comparison): answer 304."""
    tags = parse(header)
    if tags is None:
        return False
    return tags.any or any(opaque == etag for _, opaque in tags.tags)


def if_match_tags(header: str | None) -> list[str] | None:
    """The ETags an If-Match accepts, for the conditional write's `etag = ANY(...)`.

    None means no condition (header absent, or `*`: the write already requires the product
    to exist). If-Match uses the strong comparison, so weak tags never match; a header with
    nothing usable gives [], which matches no product state (412).
    """
    tags = parse(header)
    if tags is None or tags.any:
        return None
    return [opaque for weak, opaque in tags.tags if not weak]

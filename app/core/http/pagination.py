"""Keyset pagination: opaque cursors and RFC 8288 `Link: rel="next"` headers."""

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Query, Request, Response

from app.core.errors import ValidationFailed
from app.core.http.formats import json_array

# The alphabet of the cursors encode_cursor makes (unpadded base64url).
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,512}$"

# Shared by every paged listing (docs/api.md: limit 1-1000, after an opaque cursor).
PAGE_MAX = 1000
Limit = Annotated[
    int | None, Query(ge=1, le=PAGE_MAX, description="Page size; omit for everything")
]
After = Annotated[
    str | None,
    Query(
        pattern=CURSOR_PATTERN,
        description="Opaque cursor from a previous page's Link header",
    ),
]


def encode_cursor(*key: str | int) -> str:
    """The position after a row, from its sort key: opaque to clients, stable for us."""
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def invalid_cursor() -> ValidationFailed:
    return ValidationFailed.field(
        "after", "is not a valid cursor", "The cursor is not one this service issued."
    )


def decode_cursor(cursor: str, *types: type) -> tuple[Any, ...]:
    """The sort key of a cursor made by encode_cursor, checked against the expected types.

    Raises ValidationFailed (field `after`) for anything else: a client's cursor is input.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error):
        key = None
    if (
        not isinstance(key, list)
        or len(key) != len(types)
        or not all(type(v) is t for v, t in zip(key, types, strict=True))
    ):
        raise invalid_cursor()
    return tuple(key)


def next_link(request: Request, cursor: str) -> str:
    """A Link header value pointing at the next page: same URL, `after` replaced."""
    # As Starlette's URL.include_query_params would put it, without parsing the URL again.
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
    query.append(("after", cursor))
    return f'<{request.url.path}?{urlencode(query)}>; rel="next"'


def page_response(request: Request, rows: Iterable[str], cursor: str | None) -> Response:
    """A page of JSON texts PostgreSQL rendered, as one array; with a Link to the next page
    when `cursor` (the position after the last row) says there is one."""
    headers = {} if cursor is None else {"Link": next_link(request, cursor)}
    return Response(json_array(rows), headers=headers, media_type="application/json")

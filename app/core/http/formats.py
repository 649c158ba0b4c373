"""The representations of a list of products (JSON, CSV, NDJSON): choosing one, writing one."""

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.core.errors import NotAcceptable


class Format(enum.Enum):
    """A list's representation; the value is its media type."""

    JSON = "application/json"
    CSV = "text/csv"
    NDJSON = "application/x-ndjson"

    @property
    def content_type(self) -> str:
        return "text/csv; charset=utf-8" if self is Format.CSV else self.value


# Which of our formats each media range accepts, best first (the first is chosen on a tie).
_RANGES: dict[str, tuple[Format, ...]] = {
    "*/*": (Format.JSON, Format.CSV, Format.NDJSON),
    "application/*": (Format.JSON, Format.NDJSON),
    "text/*": (Format.CSV,),
    "application/json": (Format.JSON,),
    "text/csv": (Format.CSV,),
    "application/x-ndjson": (Format.NDJSON,),
}


def negotiate(accept: str | None, offered: tuple[Format, ...] = tuple(Format)) -> Format:
    """The format an Accept header asks for (RFC 9110 12.5.1: q-values, most specific wins),
    among those `offered`.

    No header means JSON. Raises NotAcceptable (406) when the client accepts none of them.
    """
    if not accept or not accept.strip():
        return Format.JSON
    best: tuple[float, int, int] | None = None
    chosen: Format | None = None
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        formats = [f for f in _RANGES.get(media, ()) if f in offered]
        if not formats or q <= 0:
            continue
        specificity = 0 if media == "*/*" else 1 if media.endswith("/*") else 2
        rank = (q, specificity, -position)
        if best is None or rank > best:
            best, chosen = rank, formats[0]
    if chosen is None:
        raise NotAcceptable("This is available as " + ", ".join(f.value for f in offered) + ".")
    return chosen


def csv_field(value: Any) -> str:
    """One CSV field quoted exactly as PostgreSQL's COPY quotes it (NULL empty, "" quoted)."""
    if value is None:
        return ""
    text = str(value)
    if text == "" or any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def json_array(items: Iterable[str]) -> str:
    """A JSON array of JSON texts PostgreSQL already rendered: joined, never parsed again."""
    return "[" + ",".join(items) + "]"


@dataclass(frozen=True)
class Framing:
    """How COPY rows (each without its newline) become a body: JSON array, NDJSON or CSV."""

    first: bytes  # before the first chunk
    between: bytes  # before every later chunk
    sep: bytes  # between rows inside a chunk
    after: bytes  # after every chunk
    close: bytes  # after the last chunk
    empty: bytes  # the whole body when there are no rows


FRAMINGS = {
    Format.JSON: Framing(b"[", b",", b",", b"", b"]", b"[]"),
    Format.NDJSON: Framing(b"", b"", b"\n", b"\n", b"", b""),
    # RFC 4180 ends records with CRLF; COPY ends them with LF, which is replaced per row.
    # The header is COPY's first row, so a CSV export is never empty.
    Format.CSV: Framing(b"", b"", b"\r\n", b"\r\n", b"", b""),
}

"""Reading an import's body: its media types, the CSV header, the guards COPY needs, the
problems of a body COPY cannot read, and spooling for a second reading."""

import csv
import hashlib
import re
from collections.abc import AsyncIterator
from typing import IO

import psycopg

from app.core.errors import ValidationFailed, field_error
from app.products.queries import CREATE_FIELDS

CSV = "text/csv"


NDJSON = "application/x-ndjson"


# Columns of an export that clients never set: accepted and ignored, so that what
# GET /products exports (CSV or NDJSON) imports back as it is.
IGNORED_FIELDS = ("id", "reserved", "available", "created_at", "updated_at")


# Where a record's quantity is: a file that gives it is a stock count per location
# (app.imports.located).
LOCATION_FIELD = "location"


# Every column a staged record may have.
STAGED_FIELDS = (*CREATE_FIELDS, *IGNORED_FIELDS, LOCATION_FIELD)


_COPY_LINE = re.compile(r"\bline (\d+)")


async def _head(stream: AsyncIterator[bytes]) -> bytes:
    """The body's first bytes, through its header line (or 64 KiB without one)."""
    head = b""
    async for chunk in stream:
        head += chunk
        if b"\n" in head or len(head) > 64 * 1024:
            break
    return head


async def then(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in rest:
        yield chunk


def csv_header(head: bytes, required: frozenset[str]) -> list[str]:
    """The column names of the header line; raises ValidationFailed unless they are usable."""
    line = head.split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r")
    try:
        names = next(csv.reader([line.decode()]), [])
    except (UnicodeDecodeError, csv.Error):
        names = []
    names = [n.strip() for n in names]
    problems = [
        field_error(n or "header", "is not a product field", line=1)
        for n in names
        if n not in STAGED_FIELDS
    ]
    problems += [
        field_error(n, "appears more than once", line=1)
        for n in sorted({n for n in names if names.count(n) > 1})
    ]
    problems += [
        field_error(n, "is a required column", line=1) for n in sorted(required - set(names))
    ]
    if problems:
        raise ValidationFailed(
            "The CSV header must name product fields: "
            + ", ".join(CREATE_FIELDS)
            + f", and {LOCATION_FIELD} (where each record's quantity is)"
            + " ("
            + ", ".join(sorted(required))
            + " required; "
            + ", ".join(IGNORED_FIELDS)
            + " accepted and ignored).",
            problems,
        )
    return names


class EndMarkerGuard:
    """Refuses a line holding only `\\.`: PostgreSQL 15's COPY would end the data there,
    silently dropping every later line. Counts lines on the way (C speed: bytes.count)."""

    def __init__(self) -> None:
        self.lines = 0
        self._tail = b"\n"

    def check(self, chunk: bytes) -> None:
        window = self._tail + chunk
        for marker in (b"\n\\.\n", b"\n\\.\r\n"):
            at = window.find(marker)
            if at >= 0:
                before = self.lines - self._tail.count(b"\n") + window[: at + 1].count(b"\n")
                raise bad_line(before + 1, "holds only '\\.', which COPY reads as end of data")
        self.lines += chunk.count(b"\n")
        # The longest marker is 5 bytes: 4 carried over catch one split between chunks.
        self._tail = window[-4:]


class CsvRecords:
    """Where the record still open at the end of a CSV body began, if one is.

    A quote that is never closed makes COPY read the rest of the body as one field and
    report the line where the body ended, past the culprit. This follows the quotes as
    COPY's CSV reader does (every `"` toggles quoting, so a doubled one inside quotes
    toggles twice; a newline outside quotes ends a record), at C speed per chunk (count,
    rfind); only newlines inside quotes cost a Python step each.
    """

    def __init__(self) -> None:
        self.lines = 0  # newlines fed so far
        self.quoted = False  # inside quotes at the end of what was fed
        self.record_line = 1  # the line where the current record began

    def feed(self, chunk: bytes) -> None:
        quotes = chunk.count(b'"')
        if quotes or not self.quoted:
            # The last newline outside quotes begins the next record. Quoting at a newline
            # is quoting at the chunk's start, toggled by every quote before it.
            end, after = len(chunk), 0
            at = chunk.rfind(b"\n")
            while at >= 0:
                after += chunk.count(b'"', at, end)
                if self.quoted == bool((quotes - after) % 2):
                    self.record_line = self.lines + chunk.count(b"\n", 0, at) + 2
                    break
                end, at = at, chunk.rfind(b"\n", 0, at)
        self.lines += chunk.count(b"\n")
        self.quoted ^= bool(quotes % 2)

    def unclosed(self) -> int | None:
        """The line where the record with a quote never closed begins, or None."""
        return self.record_line if self.quoted else None


def bad_line(line: int, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"Line {line} cannot be imported.", [field_error("line", message, line=line)]
    )


def unreadable(exc: psycopg.Error, what: str, *, unclosed: int | None = None) -> ValidationFailed:
    """The problem for a body COPY could not read; `unclosed`: the line where a record with
    a quote never closed begins (COPY then stops at the end of the body, past it)."""
    # COPY reports where it stopped as context "COPY import_rows, line 5[, column ...]".
    found = _COPY_LINE.search(exc.diag.context or "")
    line = int(found.group(1)) if found else None
    message = {
        "22P04": "does not have the header's columns",
        "22021": "is not valid UTF-8",
    }.get(exc.sqlstate or "", f"cannot be read as {what}")
    # A record COPY refused before reaching the unclosed quote keeps COPY's own reason.
    if unclosed is not None and exc.sqlstate == "22P04" and (line is None or line >= unclosed):
        line, message = unclosed, "has an unclosed quote: the record runs to the end of the body"
    return ValidationFailed(
        f"The body cannot be read as {what}" + (f" at line {line}." if line is not None else "."),
        [field_error("line", message, line=line)],
    )


SPOOL_CHUNK = 256 * 1024


# A body kept for a second reading: in memory up to this, in a temporary file past it.
SPOOL_MEMORY = 1024 * 1024


async def spool(body: AsyncIterator[bytes], into: IO[bytes]) -> bytes:
    """Copy a body into a file and return its SHA-256."""
    digest = hashlib.sha256()
    async for chunk in body:
        digest.update(chunk)
        into.write(chunk)
    into.seek(0)
    return digest.digest()


async def unspool(source: IO[bytes]) -> AsyncIterator[bytes]:
    """The file's bytes from its start, in chunks."""
    source.seek(0)
    while chunk := source.read(SPOOL_CHUNK):
        yield chunk

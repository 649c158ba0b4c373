"""The bodies of /reports: RFC 3339 instants, the stock summary, movement buckets."""

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema

from app.rules import Reason

# RFC 3339 section 5.6 date-time: a full date, a time, and an offset (Z or +hh:mm), nothing
# less. In a URL a `+` must be sent as %2B (a bare one reads as a space).
_LEAP_SECOND = re.compile(r"(T\d{2}:\d{2}):60")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")


EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


def _parse_instant(value: Any) -> datetime:
    """An RFC 3339 date-time as a UTC datetime: every one the format allows is taken.

    PostgreSQL takes offsets up to 15:59 only, so the instant goes to it in UTC. Python's
    calendar ends before RFC 3339's does (year 0000, offsets reaching past 0001 or 9999):
    such an instant reads as the calendar's nearest end, which no stored time is beyond.
    A leap second (:60) reads as the second before it.
    """
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time such as 2026-11-01T00:00:00Z")
    text = _LEAP_SECOND.sub(r"\1:59", value.upper().replace("Z", "+00:00").replace(" ", "T"))
    # Year 0000 is checked as 0004, a leap year as 0000 is.
    year_zero = text.startswith("0000")
    try:
        parsed = datetime.fromisoformat("0004" + text[4:] if year_zero else text)
    except ValueError:
        raise ValueError("is not a valid date-time") from None
    if year_zero:
        return EARLIEST
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        return EARLIEST if parsed.year == 1 else LATEST


Instant = Annotated[
    datetime,
    BeforeValidator(_parse_instant),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class StockReport(BaseModel):
    """GET /reports/stock: the view stock_summary."""

    products: int
    units: int
    reserved: int
    value: Annotated[str, Field(examples=["123456.78"], pattern=r"^\d+\.\d{2}$")]
    out_of_stock: int
    low_stock: int
    as_of: datetime


class MovementBucket(BaseModel):
    """One row of GET /reports/movements: a bucket's movements of one reason."""

    bucket: Annotated[str, Field(examples=["2026-11-23"], description="The bucket's first day")]
    reason: Reason
    movements: int
    units: Annotated[int, Field(description="The sum of the deltas")]

"""/reports: the stock at a glance and stock flow over time, read from schema.sql's views."""

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response

from app.core.errors import LocationNotFound
from app.core.http.formats import FRAMINGS, Format, csv_field, negotiate
from app.core.http.streaming import CopyStream
from app.core.openapi import problems
from app.deps import LocationFilter, ReadsDep, StockReportDep
from app.reports import queries as reports
from app.reports.schemas import EARLIEST, Instant, MovementBucket, StockReport

router = APIRouter(prefix="/reports", tags=["reports"], responses=problems(503))

# Reports come as JSON or CSV.
_OFFERED = (Format.JSON, Format.CSV)
_CSV_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {Format.CSV.value: {}}}}
# How long one computation of the stock report serves every request (per process).
STOCK_REPORT_SECONDS = 1.0
# The movements report's window when the client names no `from`.
DEFAULT_WINDOW = timedelta(days=30)

Accept = Annotated[str | None, Header(include_in_schema=False)]


def _rfc3339(at: datetime) -> str:
    """An instant as the API writes timestamps: UTC, microseconds, `Z`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@router.get(
    "/stock",
    operation_id="stockReport",
    response_model=StockReport,
    responses={**problems(404, 406, 422), **_CSV_RESPONSE},
    summary="The stock at a glance: products, units, exact value, out of stock, low on stock",
)
async def stock_report(
    reads: ReadsDep,
    recent: StockReportDep,
    accept: Accept = None,
    location: LocationFilter = None,
) -> Response:
    fmt = negotiate(accept, _OFFERED)
    if location is None:
        summary = await recent.get(lambda: reads.run(reports.stock_summary_now))
    else:
        at = await reads.run(lambda db: reports.stock_summary_at(db, location))
        if at is None:
            raise LocationNotFound(location)
        summary = at
    values = {
        "products": summary.products,
        "units": int(summary.units),
        "reserved": int(summary.reserved),
        # The view's numeric has exactly 2 decimals; "f" keeps any size out of exponent form.
        "value": format(summary.value, "f"),
        "out_of_stock": summary.out_of_stock,
        "low_stock": summary.low_stock,
        "as_of": _rfc3339(summary.as_of),
    }
    if fmt is Format.CSV:
        lines = [",".join(values), ",".join(csv_field(v) for v in values.values())]
        return Response("\r\n".join(lines) + "\r\n", media_type=fmt.content_type)
    return Response(json.dumps(values, separators=(",", ":")), media_type=fmt.content_type)


@router.get(
    "/movements",
    operation_id="movementReport",
    response_model=list[MovementBucket],
    responses={**problems(406, 422), **_CSV_RESPONSE},
    summary="Stock movements summed by day, week or month (UTC) and reason",
)
async def movements_report(
    reads: ReadsDep,
    from_: Annotated[
        Instant | None,
        Query(alias="from", description="Start, inclusive (RFC 3339); default: `to` - 30 days"),
    ] = None,
    to: Annotated[
        Instant | None, Query(description="End, exclusive (RFC 3339); default: now")
    ] = None,
    bucket: Annotated[
        Literal["day", "week", "month"],
        Query(description="Bucket size; UTC days, weeks starting on Monday, months"),
    ] = "day",
    accept: Accept = None,
) -> Response:
    fmt = negotiate(accept, _OFFERED)
    end = to or datetime.now(UTC)
    # Near year 1 the default window starts at the earliest instant there is.
    start = from_ or max(end, EARLIEST + DEFAULT_WINDOW) - DEFAULT_WINDOW
    # A window with to <= from holds no movements: its report is empty, not an error, as
    # the OpenAPI document can say (no schema relates two parameters; issue 13).
    end = max(start, end)
    report = reports.movements_report(
        csv=fmt is Format.CSV, from_at=start, to_at=end, bucket=bucket
    )
    # Streamed in a bulk slot: a window of years by day is long, and memory stays flat.
    return CopyStream(reads, report, framing=FRAMINGS[fmt], media_type=fmt.content_type)

"""GET /products: formats, keyset pages and SKU prefixes, turned into SQL and response bodies."""

import enum
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response

from app import queries
from app.errors import ApiError
from app.pagination import decode_cursor, encode_cursor, next_link
from app.streaming import JSON_ARRAY, NDJSON, BulkSlots, CopyStream, csv_framing


class Format(enum.Enum):
    """The representations of a product list; the value is the media type."""

    JSON = "application/json"
    CSV = "text/csv"
    NDJSON = "application/x-ndjson"


# Which of our formats each media range accepts, best first (the first is chosen on a tie).
_RANGES: dict[str, tuple[Format, ...]] = {
    "*/*": (Format.JSON, Format.CSV, Format.NDJSON),
    "application/*": (Format.JSON, Format.NDJSON),
    "text/*": (Format.CSV,),
    "application/json": (Format.JSON,),
    "text/csv": (Format.CSV,),
    "application/x-ndjson": (Format.NDJSON,),
}


def negotiate(accept: str | None) -> Format:
    """The format an Accept header asks for (RFC 9110 12.5.1: q-values, most specific wins).

    No header means JSON. Raises ApiError 406 when the client accepts none of ours.
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
        formats = _RANGES.get(media)
        if not formats or q <= 0:
            continue
        specificity = 0 if media == "*/*" else 1 if media.endswith("/*") else 2
        rank = (q, specificity, -position)
        if best is None or rank > best:
            best, chosen = rank, formats[0]
    if chosen is None:
        raise ApiError(
            406,
            "not_acceptable",
            "Products are available as application/json, text/csv and application/x-ndjson.",
        )
    return chosen


# What a prefix may hold: the characters of a SKU. Anything else could match nothing.
_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def prefix_range(prefix: str) -> tuple[str, str]:
    """[low, high) bounds on lower(sku) that hold exactly the SKUs starting with prefix.

    A range instead of LIKE: `_` is a SKU character and a LIKE wildcard, and a LIKE pattern
    that arrives as a bound parameter cannot use the index under a generic plan, while
    `~>=~`/`~<~` (the text_pattern_ops operators of products_sku_lower_key) always can.
    Raises ApiError 422 for characters no SKU has.
    """
    if not _PREFIX.match(prefix):
        raise ApiError(
            422,
            "validation_failed",
            "The SKU prefix is invalid.",
            errors=[{"field": "sku_prefix", "message": "must be 1-64 of A-Z a-z 0-9 . _ -"}],
        )
    low = prefix.lower()
    # Byte order (text_pattern_ops): every SKU character is ASCII below 0x7f, so bumping
    # the last character gives the first string past every extension of the prefix.
    return low, low[:-1] + chr(ord(low[-1]) + 1)


def cursor_key(key: tuple[Any, ...]) -> tuple[str, int]:
    """Check a decoded (created_at, id) cursor key; raises ApiError 422 if it is not one."""
    created_at, id_ = key
    try:
        datetime.fromisoformat(created_at)
    except ValueError:
        raise ApiError(
            422,
            "validation_failed",
            "The cursor is not one this service issued.",
            errors=[{"field": "after", "message": "is not a valid cursor"}],
        ) from None
    return created_at, id_


# RFC 3339 UTC with microseconds: what the API shows, and exact for cursors. The colons are
# quoted literals so that pgbench (bench/) does not read `:MI` as one of its variables.
_UTC = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"')"""

# The CSV columns: API.md's field table order, values written as product_json writes them.
CSV_COLUMNS = f"""
    p.id, p.sku, p.name, p.description, to_char(p.price, 'FM9999999990.00') AS price,
    p.quantity, {_UTC.format("p.created_at")} AS created_at,
    {_UTC.format("p.updated_at")} AS updated_at
"""
CSV_HEADER = "id,sku,name,description,price,quantity,created_at,updated_at"


@dataclass(frozen=True)
class Query:
    """Which products to list: an optional prefix, a keyset position and a page size."""

    prefix: tuple[str, str] | None = None
    after: tuple[str, int] | None = None
    limit: int | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.prefix:
            clauses.append("lower(p.sku) ~>=~ %(low)s AND lower(p.sku) ~<~ %(high)s")
            params["low"], params["high"] = self.prefix
        if self.after:
            clauses.append("(p.created_at, p.id) > (%(after_at)s::timestamptz, %(after_id)s)")
            params["after_at"], params["after_id"] = self.after
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def page_sql(self) -> tuple[str, dict[str, Any]]:
        """One page plus one row (to know whether more remain), with each row's cursor key."""
        assert self.limit is not None
        where, params = self.where()
        params["limit"] = self.limit + 1
        sql = (
            f"SELECT product_json(p)::text, {_UTC.format('p.created_at')}, p.id "
            f"FROM products p{where} ORDER BY p.created_at, p.id LIMIT %(limit)s"
        )
        return sql, params

    def copy_sql(self, fmt: Format) -> tuple[str, dict[str, Any]]:
        """A COPY ... TO STDOUT of every matching product, one row per COPY message.

        JSON rows use CSV format with a quote and a delimiter that JSON text never holds
        raw, so PostgreSQL sends product_json's text untouched (text format would escape
        every backslash). PostgreSQL's CSV quoting is RFC 4180's: fields holding a comma,
        quote, CR or LF, and empty strings, are quoted with quotes doubled; NULL is empty.
        """
        where, params = self.where()
        order = " ORDER BY p.created_at, p.id"
        if fmt is Format.CSV:
            select = f"SELECT {CSV_COLUMNS} FROM products p{where}{order}"
            return f"COPY ({select}) TO STDOUT (FORMAT csv)", params
        select = f"SELECT product_json(p) FROM products p{where}{order}"
        return f"COPY ({select}) TO STDOUT (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')", params


def csv_field(value: Any) -> str:
    """One CSV field quoted exactly as PostgreSQL's COPY quotes it (see Query.copy_sql)."""
    if value is None:
        return ""
    text = str(value)
    if text == "" or any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


_FIELDS = CSV_HEADER.split(",")


def render_page(fmt: Format, rows: list[str]) -> bytes:
    """A whole page body from product_json texts (at most 1000: paged listings are small)."""
    if fmt is Format.JSON:
        return ("[" + ",".join(rows) + "]").encode()
    if fmt is Format.NDJSON:
        return "".join(row + "\n" for row in rows).encode()
    lines = [CSV_HEADER]
    for row in rows:
        product = json.loads(row)
        lines.append(",".join(csv_field(product[f]) for f in _FIELDS))
    return ("\r\n".join(lines) + "\r\n").encode()


_MEDIA_TYPES = {
    Format.JSON: "application/json",
    Format.CSV: "text/csv; charset=utf-8",
    Format.NDJSON: "application/x-ndjson",
}


async def respond(
    pool: AsyncConnectionPool[Any],
    slots: BulkSlots,
    request: Request,
    *,
    fmt: Format,
    limit: int | None,
    after: str | None,
    sku_prefix: str | None,
) -> Response:
    """GET /products: one page (with Link rel=next when more remain) or a streamed export."""
    query = Query(
        prefix=prefix_range(sku_prefix) if sku_prefix is not None else None,
        after=cursor_key(decode_cursor(after, str, int)) if after is not None else None,
        limit=limit,
    )
    media_type = _MEDIA_TYPES[fmt]
    if limit is None:
        sql, params = query.copy_sql(fmt)
        framing = {Format.JSON: JSON_ARRAY, Format.NDJSON: NDJSON}.get(fmt) or csv_framing(
            CSV_HEADER
        )
        return CopyStream(pool, slots, sql, params, framing=framing, media_type=media_type)
    sql, params = query.page_sql()
    # A prefix's selectivity decides the plan: few matches -> the SKU index, many -> walk
    # the (created_at, id) index. A prepared statement's generic plan cannot see the prefix
    # and settles on the latter for all, scanning the whole index for a rare prefix.
    prepare = False if query.prefix else None
    rows = await queries.list_page(pool, sql, params, prepare=prepare)
    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        _, created_at, id_ = rows[-1]
        headers["Link"] = next_link(request, encode_cursor(created_at, id_))
    body = render_page(fmt, [row[0] for row in rows])
    return Response(body, headers=headers, media_type=media_type)

"""POST /products/import: a CSV or NDJSON body streamed through COPY, all or nothing.

The body goes straight from the socket into `COPY ... FROM STDIN`, inside the caller's
transaction. A CSV import of new products (`error`, the default) is first COPYed into
products itself, in a savepoint, the body spooled on the way: a valid file is read and
written once. Otherwise - or when that attempt fails - the body goes into a temporary
staging table that numbers the records, and a few set-wise statements - one INSERT ...
SELECT by default - write it, where the table's CHECKs and its unique index decide, as for
every other client. Records whose SKU exists are refused (`error`), left alone (`skip`) or
written over (`update`, a stock count when the file has quantities: each changed quantity
gets its `correction` movement). Only when a statement fails does the diagnosis run:
set-wise queries over the staging table that name up to MAX_LISTED bad records by line,
validation problems (422) before existing SKUs (409). The rules it applies are the
database's own: the required columns and types come from the model, the CHECK expressions
from the live catalog (pg_constraint), never from a second copy. Nothing is written unless
everything is.
"""

import tempfile
from collections.abc import AsyncIterator

import psycopg

from app.changes import queries as changes
from app.database import Connection, savepoint
from app.imports import located
from app.imports.diagnosis import (
    ANY_REPEATED,
    INVALID_JSON,
    REPEATED,
    WRONG_SHAPE,
    LineNumbers,
    csv_lines,
    diagnose,
    ndjson_lines,
    report,
)
from app.imports.parsing import (
    CSV,
    LOCATION_FIELD,
    SPOOL_MEMORY,
    _head,
    csv_header,
    then,
    unspool,
)
from app.imports.staging import (
    ANY_LOCATED,
    NO_BITMAP_SCANS,
    REQUIRED,
    Imported,
    OnConflict,
    copy_csv,
    copy_direct,
    copy_ndjson,
    parse_ndjson,
    stage_docs,
    write,
)
from app.products.queries import CREATE_FIELDS


async def import_products(
    conn: Connection,
    body: AsyncIterator[bytes],
    *,
    media_type: str,
    on_conflict: OnConflict = "error",
) -> Imported:
    """Import every record of a CSV or NDJSON body, or none; say what was done.

    Runs inside the caller's transaction on `conn`. Records whose SKU exists are refused
    (`error`: DuplicateSku listing them), left as they are (`skip`), or written over
    (`update`: the fields the record gives; a changed quantity gets one `correction`
    movement with note `import`). Raises ValidationFailed (unreadable or invalid records,
    unknown or missing columns, a SKU twice in the file), listing at most MAX_LISTED
    records by line.
    """
    # Its statements may write millions of rows: their events are logged set-wise.
    await changes.log_in_bulk(conn)
    await conn.execute(NO_BITMAP_SCANS)
    if media_type != CSV:
        await _stage_ndjson(conn, body, given=on_conflict == "update")
        if await _located(conn):
            return await _counted(conn, on_conflict, [], csv=False)
        return await _staged_write(conn, on_conflict, [], ndjson_lines)
    stream = aiter(body)
    head = await _head(stream)
    # Every record of an `error` import creates a product; otherwise only new SKUs do, and
    # a file naming existing products (a stock count: sku,quantity) needs no more columns.
    columns = csv_header(head, REQUIRED if on_conflict == "error" else frozenset({"sku"}))
    if LOCATION_FIELD in columns:
        await copy_csv(conn, then(head, stream), columns)
        return await _counted(conn, on_conflict, columns, csv=True)
    if on_conflict != "error" or not set(columns) <= set(CREATE_FIELDS):
        # skip/update are chosen for files that name existing products, where COPY into
        # the table fails; ignored columns cannot be left out of a COPY.
        await copy_csv(conn, then(head, stream), columns)
        return await _staged_write(conn, on_conflict, columns, csv_lines)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spooled:
        created = await copy_direct(conn, head, stream, columns, spooled)
        if created is not None:
            return Imported(created, 0, 0)
        # Something in the file is wrong: the staging table and the diagnosis say what.
        await copy_csv(conn, unspool(spooled), columns)
    return await _staged_write(conn, on_conflict, columns, csv_lines)


async def _located(conn: Connection) -> bool:
    """Whether any staged NDJSON record gives a location (then all are counts by location)."""
    row = await (await conn.execute(ANY_LOCATED.sql)).fetchone()
    return bool(row and row[0])


async def _staged_write(
    conn: Connection, on_conflict: OnConflict, columns: list[str], line_of: LineNumbers
) -> Imported:
    """The staged records into products, set-wise; on failure the diagnosis names them."""
    if on_conflict != "error":
        # Without one INSERT of every record, the unique index no longer sees them all.
        cur = await conn.execute(ANY_REPEATED.sql, ANY_REPEATED.params())
        repeated = await cur.fetchone()
        if repeated and repeated[0]:
            await report(conn, REPEATED, line_of, existing=False)
    try:
        async with savepoint(conn):
            return await write(conn, on_conflict, columns)
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
        await diagnose(conn, line_of, on_conflict, columns)
        raise


async def _counted(
    conn: Connection, on_conflict: OnConflict, columns: list[str], *, csv: bool
) -> Imported:
    """A file with locations: checked whole, its products written, then its counts."""
    written = await located.reduce(conn, on_conflict, columns, csv=csv)
    await _staged_write(conn, on_conflict, written, located.lines)
    return await located.count(conn, on_conflict)


async def _stage_ndjson(conn: Connection, body: AsyncIterator[bytes], *, given: bool) -> None:
    """An NDJSON body into the staging table; the lines that are not JSON objects of product
    fields are named first."""
    await copy_ndjson(conn, body)
    try:
        await parse_ndjson(conn)
    except psycopg.errors.DataError:
        await report(conn, INVALID_JSON, ndjson_lines, existing=False)
        raise
    await report(conn, WRONG_SHAPE, ndjson_lines, existing=False)
    await stage_docs(conn, given=given)

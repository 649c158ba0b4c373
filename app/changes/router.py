"""/changes: the change log, page by page or as a live stream of server-sent events."""

import re
import weakref
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette import EventSourceResponse

from app.changes import queries, stream
from app.changes.schemas import ChangeRead
from app.core.errors import CursorExpired, ValidationFailed
from app.core.http.pagination import page_response
from app.core.openapi import problems
from app.deps import (
    Credential,
    DatabaseDep,
    FeedDep,
    MetricsDep,
    ReadsDep,
    SettingsDep,
    StreamSharesDep,
)

router = APIRouter(tags=["changes"], responses=problems(503))

SEQ_MAX = 2**63 - 1
# A seq as Last-Event-ID carries it: decimal digits, at most as many as SEQ_MAX has.
SEQ_PATTERN = rf"^[0-9]{{1,{len(str(SEQ_MAX))}}}$"
_SEQ = re.compile(SEQ_PATTERN)
# On shutdown a stream has this long to end by itself before it is cut off.
SHUTDOWN_GRACE_SECONDS = 2.0

ChangeCursor = Annotated[
    int | None,
    Query(ge=0, le=SEQ_MAX, description="The `seq` of the last event you have; omit to start "
          "at the oldest event kept"),
]  # fmt: skip


def _expired(page: queries.Page, after: int | None) -> None:
    if page.expired(after):
        assert after is not None
        raise CursorExpired(after, page.purged)


@router.get(
    "/changes",
    operation_id="listChanges",
    response_model=list[ChangeRead],
    responses=problems(410, 422),
    summary="Every change to a product, oldest first; follow `after` to see each exactly once",
)
async def list_changes(
    request: Request,
    reads: ReadsDep,
    after: ChangeCursor = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Events per page")] = 100,
) -> Response:
    page = await reads.run(lambda db: queries.page(db, after=after, limit=limit + 1))
    _expired(page, after)
    events = page.events[:limit]
    more = len(page.events) > limit
    return page_response(request, (e.json for e in events), str(events[-1].seq) if more else None)


def _resume_point(last_event_id: str | None, after: int | None) -> int | None:
    if last_event_id is None:
        return after
    # Not str.isdigit(): it takes "²", which int() then refuses.
    if not _SEQ.match(last_event_id) or int(last_event_id) > SEQ_MAX:
        raise ValidationFailed.field("Last-Event-ID", "must be the seq of an event")
    return int(last_event_id)


@router.get(
    "/changes/stream",
    operation_id="streamChanges",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Events as they happen"},
        **problems(410, 422),
    },
    summary="The change log as server-sent events, live; resumes from Last-Event-ID",
)
async def stream_changes(
    db: DatabaseDep,
    feed: FeedDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    shares: StreamSharesDep,
    credential: Credential,
    after: ChangeCursor = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Sent by EventSource on reconnect: the seq of the last event seen",
            # Documented only: _resume_point decides (and names the header in its 422).
            json_schema_extra={"pattern": SEQ_PATTERN},
        ),
    ] = None,
) -> EventSourceResponse:
    start = _resume_point(last_event_id, after)
    # Before the 200: a cursor older than the retention is a 410, not an empty stream.
    first = await queries.page(db, after=start, limit=stream.STREAM_BATCH)
    _expired(first, start)
    cursor = first.purged if start is None else start
    release = shares.take(credential)
    # When the server stops, sse-starlette sets `stopping`; the stream then ends on its own
    # (the body completes) instead of being cut off.
    stopping = anyio.Event()
    body = stream.events(
        db,
        feed,
        first.events,
        cursor,
        open_streams=metrics.streams,
        wait_seconds=settings.stream_heartbeat_seconds,
        stopping=stopping,
        release=release,
    )
    # A body never started (the client left first) runs no `finally`: its share comes back
    # when it is collected.
    weakref.finalize(body, release)
    return EventSourceResponse(
        body,
        ping=settings.stream_heartbeat_seconds,
        send_timeout=settings.send_timeout_seconds,
        shutdown_event=stopping,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )

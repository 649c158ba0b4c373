"""/reservations: hold stock for an order, then fulfil, release or let it expire."""

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from app.core.errors import ReservationNotFound, ValidationFailed
from app.core.http.formats import json_array
from app.core.http.limits import JsonRoute
from app.core.http.pagination import After, Limit, decode_cursor, encode_cursor, next_link
from app.core.openapi import problems
from app.database import Connection
from app.deps import (
    Credential,
    DatabaseDep,
    IdempotencyDep,
    IdempotencyKey,
    ReadsDep,
    ReservationId,
)
from app.reservations import queries as reservations
from app.reservations.schemas import (
    ReservationCreate,
    ReservationLineIn,
    ReservationPatch,
    ReservationRead,
    Status,
)
from app.rules import QUANTITY_MAX, SKU_MAX, SKU_PATTERN

router = APIRouter(
    prefix="/reservations", tags=["reservations"], responses=problems(503), route_class=JsonRoute
)

# Every reservation id is below this: the first page starts under it.
_NO_ID = 2**63 - 1


def _json(body: str, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def added_together(lines: list[ReservationLineIn]) -> list[dict[str, Any]]:
    """The lines for one SKU (any case) and one location (or none) as one, in the order each
    first appeared: what is checked and held."""
    merged: dict[tuple[str, str | None], dict[str, Any]] = {}
    for line in lines:
        key = (line.sku.lower(), line.location.lower() if line.location else None)
        if key in merged:
            merged[key]["quantity"] += line.quantity
        else:
            merged[key] = {"sku": line.sku, "quantity": line.quantity, "location": line.location}
    for i, line_ in enumerate(merged.values()):
        if line_["quantity"] > QUANTITY_MAX:
            raise ValidationFailed.field(
                f"lines.{i}.quantity",
                f"the lines for one SKU add up to more than {QUANTITY_MAX}",
            )
    return list(merged.values())


@router.post(
    "",
    operation_id="createReservation",
    status_code=201,
    response_model=ReservationRead,
    responses=problems(404, 409, 422),
    summary="Hold stock for an order: every line or nothing, never more than there is",
)
async def create_reservation(
    body: ReservationCreate,
    idempotency: IdempotencyDep,
    credential: Credential,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    lines = added_together(body.lines)

    async def operation(conn: Connection) -> Response:
        made = await reservations.reserve(
            conn, reference=body.reference, expires_in=body.expires_in, lines=lines
        )
        return _json(made, 201, {"Location": f"/reservations/{json.loads(made)['id']}"})

    return await idempotency.run(
        operation, key=idempotency_key, credential=credential, scope="POST /reservations",
        request=(body,),
    )  # fmt: skip


@router.get(
    "",
    operation_id="listReservations",
    response_model=list[ReservationRead],
    responses=problems(422),
    summary="Reservations, newest first; filtered by status, reference or SKU",
)
async def list_reservations(
    request: Request,
    reads: ReadsDep,
    status: Status | None = None,
    reference: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    sku: Annotated[str | None, Query(min_length=1, max_length=SKU_MAX, pattern=SKU_PATTERN)] = None,
    limit: Limit = None,
    after: After = None,
) -> Response:
    before = decode_cursor(after, int)[0] if after is not None else _NO_ID
    size = 1000 if limit is None else limit

    rows = await reads.run(
        lambda db: reservations.reservations_page(
            db, before=before, limit=size + 1, status=status, reference=reference, sku=sku
        )
    )
    headers = {}
    if len(rows) > size:
        rows = rows[:size]
        headers["Link"] = next_link(request, encode_cursor(rows[-1][1]))
    return _json(json_array([json_ for json_, _ in rows]), headers=headers)


@router.get(
    "/{id}",
    operation_id="getReservation",
    response_model=ReservationRead,
    responses=problems(404),
    summary="One reservation: what it holds where, and its status",
)
async def get_reservation(reservation_id: ReservationId, db: DatabaseDep) -> Response:
    found = await reservations.reservation(db, reservation_id=reservation_id)
    if found is None:
        raise ReservationNotFound(reservation_id)
    return _json(found)


async def _change(
    idempotency: Any,
    credential: str,
    key: str | None,
    reservation_id: int,
    action: str,
    scope: str,
    request: tuple[Any, ...],
    expires_in: int | None = None,
) -> Response:
    async def operation(conn: Connection) -> Response:
        return _json(
            await reservations.change(
                conn, reservation_id=reservation_id, action=action, expires_in=expires_in
            )
        )

    return await idempotency.run(  # type: ignore[no-any-return]
        operation, key=key, credential=credential, scope=scope, request=request
    )


def _ending(action: str, operation_id: str, summary: str) -> None:
    """POST /reservations/{id}/<action>: fulfil and release differ only in the action."""

    async def end_reservation(
        reservation_id: ReservationId,
        idempotency: IdempotencyDep,
        credential: Credential,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        return await _change(
            idempotency, credential, idempotency_key, reservation_id, action,
            f"POST /reservations/{{id}}/{action}", (str(reservation_id),),
        )  # fmt: skip

    router.post(
        f"/{{id}}/{action}",
        operation_id=operation_id,
        response_model=ReservationRead,
        responses=problems(404, 409),
        summary=summary,
    )(end_reservation)


_ending(
    "fulfil",
    "fulfilReservation",
    "The held units leave stock (one movement, reason sold, per allocation)",
)
_ending("release", "releaseReservation", "Give the held units back")


@router.patch(
    "/{id}",
    operation_id="extendReservation",
    response_model=ReservationRead,
    responses=problems(404, 409, 422),
    summary="A new expiry, counted from now",
)
async def extend_reservation(
    reservation_id: ReservationId,
    body: ReservationPatch,
    idempotency: IdempotencyDep,
    credential: Credential,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _change(
        idempotency, credential, idempotency_key, reservation_id, "extend",
        "PATCH /reservations/{id}", (str(reservation_id), body), body.expires_in,
    )  # fmt: skip

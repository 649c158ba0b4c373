"""/locations, /products/{sku}/stock and /transfers: stock in many places."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from app.core.errors import LocationNotFound, ProductNotFound, ValidationFailed
from app.core.http.formats import FRAMINGS, Format, csv_field, json_array, negotiate
from app.core.http.limits import JsonRoute
from app.core.http.pagination import After, Limit, decode_cursor, encode_cursor, next_link
from app.core.http.streaming import CopyStream
from app.core.openapi import problems
from app.database import Connection
from app.deps import (
    Credential,
    DatabaseDep,
    IdempotencyDep,
    IdempotencyKey,
    LocationCode,
    ProductSku,
    ReadsDep,
)
from app.locations import queries as locations
from app.locations.schemas import (
    LocationCreate,
    LocationPatch,
    LocationRead,
    LocationStockRow,
    ProductStockRead,
    TransferCreate,
    TransferRead,
)

router = APIRouter(tags=["locations"], responses=problems(503), route_class=JsonRoute)

_STOCK_FIELDS = tuple(LocationStockRow.model_fields)


def _json(body: str, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


@router.post(
    "/locations",
    operation_id="createLocation",
    status_code=201,
    response_model=LocationRead,
    responses=problems(409, 422),
    summary="Add a location that holds stock",
)
async def create_location(
    body: LocationCreate,
    idempotency: IdempotencyDep,
    credential: Credential,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    async def operation(conn: Connection) -> Response:
        code, made = await locations.create_location(conn, code=body.code, name=body.name)
        return _json(made, 201, {"Location": f"/locations/{code}"})

    return await idempotency.run(
        operation, key=idempotency_key, credential=credential, scope="POST /locations",
        request=(body,),
    )  # fmt: skip


@router.get(
    "/locations",
    operation_id="listLocations",
    response_model=list[LocationRead],
    responses=problems(422),
    summary="The locations, oldest first; every one, or a page",
)
async def list_locations(
    request: Request, reads: ReadsDep, limit: Limit = None, after: After = None
) -> Response:
    start = None
    if after is not None:
        at, id_ = decode_cursor(after, str, int)
        start = (datetime.fromisoformat(at), id_)
    size = 1000 if limit is None else limit

    rows = await reads.run(lambda db: locations.locations_page(db, after=start, limit=size + 1))
    headers = {}
    if limit is not None and len(rows) > limit:
        rows = rows[:limit]
        headers["Link"] = next_link(
            request, encode_cursor(rows[-1].created_at.isoformat(), rows[-1].id)
        )
    return _json(json_array([row.json for row in rows]), headers=headers)


@router.get(
    "/locations/{code}",
    operation_id="getLocation",
    response_model=LocationRead,
    responses=problems(404),
    summary="One location, by code in any letter case",
)
async def get_location(code: LocationCode, db: DatabaseDep) -> Response:
    found = await locations.location(db, code=code)
    if found is None:
        raise LocationNotFound(code)
    return _json(found)


@router.patch(
    "/locations/{code}",
    operation_id="renameLocation",
    response_model=LocationRead,
    responses=problems(404, 422),
    summary="Rename a location (its code stays)",
)
async def rename_location(code: LocationCode, body: LocationPatch, db: DatabaseDep) -> Response:
    async def operation(conn: Connection) -> Response:
        renamed = await locations.rename_location(conn, code=code, name=body.name)
        if renamed is None:
            raise LocationNotFound(code)
        return _json(renamed)

    return await db.write(operation, transaction=False)


@router.delete(
    "/locations/{code}",
    operation_id="deleteLocation",
    status_code=204,
    responses=problems(404, 409),
    summary="Delete a location that holds nothing (never MAIN)",
)
async def delete_location(code: LocationCode, db: DatabaseDep) -> Response:
    async def operation(conn: Connection) -> Response:
        if not await locations.delete_location(conn, code=code):
            raise LocationNotFound(code)
        return Response(status_code=204)

    return await db.write(operation, transaction=False)


@router.get(
    "/locations/{code}/stock",
    operation_id="listLocationStock",
    response_model=list[LocationStockRow],
    responses={
        **problems(404, 406, 422),
        200: {"content": {f.value: {} for f in Format if f is not Format.JSON}},
    },
    summary="Every product with units or holds at a location, by SKU; JSON, CSV, NDJSON",
)
async def list_location_stock(
    code: LocationCode,
    request: Request,
    reads: ReadsDep,
    limit: Limit = None,
    after: After = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    fmt = negotiate(accept)
    start = decode_cursor(after, str)[0] if after is not None else None
    if limit is None:
        # Every product there, streamed like an export of GET /products.
        found = await reads.run(lambda db: locations.location_id(db, code=code))
        if found is None:
            raise LocationNotFound(code)
        return CopyStream(
            reads,
            locations.location_stock_export(found, after=start, csv=fmt is Format.CSV),
            framing=FRAMINGS[fmt],
            media_type=fmt.content_type,
        )
    rows = await reads.run(
        lambda db: locations.location_stock_page(db, code=code, after=start, limit=limit + 1)
    )
    if rows is None:
        raise LocationNotFound(code)
    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        headers["Link"] = next_link(request, encode_cursor(rows[-1][1]))
    texts = [json for json, _ in rows]
    return Response(_render(fmt, texts), headers=headers, media_type=fmt.content_type)


def _render(fmt: Format, rows: list[str]) -> bytes:
    if fmt is Format.JSON:
        return json_array(rows).encode()
    if fmt is Format.NDJSON:
        return "".join(row + "\n" for row in rows).encode()
    lines = [",".join(_STOCK_FIELDS)]
    for row in rows:
        values = LocationStockRow.model_validate_json(row)
        lines.append(",".join(csv_field(getattr(values, f)) for f in _STOCK_FIELDS))
    return ("\r\n".join(lines) + "\r\n").encode()


@router.get(
    "/products/{sku}/stock",
    operation_id="getProductStock",
    response_model=ProductStockRead,
    responses=problems(404),
    summary="A product's totals and its stock at every location holding some",
)
async def product_stock(sku: ProductSku, db: DatabaseDep) -> Response:
    found = await locations.product_stock(db, sku=sku)
    if found is None:
        raise ProductNotFound(sku)
    return _json(found)


@router.post(
    "/transfers",
    operation_id="createTransfer",
    status_code=201,
    response_model=TransferRead,
    responses=problems(404, 409, 422),
    summary="Move stock from one location to another (two movements, reason transfer)",
)
async def create_transfer(
    body: TransferCreate,
    idempotency: IdempotencyDep,
    credential: Credential,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    if body.from_.lower() == body.to.lower():
        raise ValidationFailed.field(
            "to", "must be another location than `from`", "A transfer needs two locations."
        )

    async def operation(conn: Connection) -> Response:
        made = await locations.transfer(
            conn, sku=body.sku, from_=body.from_, to=body.to, quantity=body.quantity,
            note=body.note,
        )  # fmt: skip
        return _json(made, 201)

    return await idempotency.run(
        operation, key=idempotency_key, credential=credential, scope="POST /transfers",
        request=(body,),
    )  # fmt: skip

"""/products: add, list, look up, change and delete products."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import ValidationError

from app.core.errors import ProductNotFound
from app.core.http import etags
from app.core.http.limits import JsonRoute
from app.core.http.shortcuts import shortcut
from app.core.openapi import problems
from app.database import Connection
from app.deps import (
    CreatesDep,
    Credential,
    DatabaseDep,
    IdempotencyDep,
    IdempotencyKey,
    LookupsDep,
    ProductSku,
    is_name,
    shortcut_credential,
)
from app.products import queries as products
from app.products.schemas import ProductCreate, ProductRead, ProductUpdate

router = APIRouter(
    prefix="/products", tags=["products"], responses=problems(503), route_class=JsonRoute
)

IfNoneMatch = Annotated[
    str | None, Header(alias="If-None-Match", description="ETags you hold: 304 if current")
]


async def _if_match(
    if_match: Annotated[
        str | None,
        Header(alias="If-Match", description="Change only if the product still has this ETag"),
    ] = None,
) -> list[str] | None:
    return etags.if_match_tags(if_match)


# The ETags a conditional write accepts (None: no condition).
IfMatch = Annotated[list[str] | None, Depends(_if_match)]


def _json(
    product: products.ProductJson, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        product.json,
        status_code=status_code,
        headers={"ETag": product.etag, **(headers or {})},
        media_type="application/json",
    )


async def _plain_create(request: Request) -> dict[str, Any] | None:
    # The common create: no query string, no Idempotency-Key, a valid body.
    if request.scope["query_string"] or "idempotency-key" in request.headers:
        return None
    credential = shortcut_credential(request)
    if credential is None:
        return None
    try:
        body = ProductCreate.model_validate(await request.json())
    except ValidationError:
        return None
    return {
        "body": body,
        "idempotency": request.state.idempotency,
        "creates": request.state.creates,
        "credential": credential,
        "idempotency_key": None,
    }


@router.post(
    "",
    operation_id="createProduct",
    status_code=201,
    response_model=ProductRead,
    responses=problems(409, 422),
    summary="Add a product",
)
@shortcut(_plain_create)
async def create_product(
    body: ProductCreate,
    idempotency: IdempotencyDep,
    creates: CreatesDep,
    credential: Credential,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def created(product: products.ProductJson) -> Response:
        return _json(product, 201, {"Location": f"/products/{body.sku}"})

    if idempotency_key is None:
        return created(await creates.create(body))

    async def operation(conn: Connection) -> Response:
        return created(await products.create_product(conn, new=body))

    return await idempotency.run(
        operation,
        key=idempotency_key,
        credential=credential,
        scope="POST /products",
        request=(body,),
    )


async def _plain_lookup(request: Request) -> dict[str, Any] | None:
    # The common lookup: a well-formed SKU, no query string.
    sku: str = request.path_params["sku"]
    if request.scope["query_string"] or not is_name(sku):
        return None
    if shortcut_credential(request) is None:
        return None
    return {
        "sku": sku,
        "lookups": request.state.lookups,
        "if_none_match": request.headers.get("if-none-match"),
    }


@router.get(
    "/{sku}",
    operation_id="getProduct",
    response_model=ProductRead,
    responses={**problems(404), 304: {"description": "Not modified: your ETag is current"}},
    summary="Look up one product by SKU, ignoring case",
)
@shortcut(_plain_lookup)
async def get_product(
    sku: ProductSku, lookups: LookupsDep, if_none_match: IfNoneMatch = None
) -> Response:
    product = await lookups.get(sku)
    if product is None:
        raise ProductNotFound(sku)
    if etags.none_match(if_none_match, product.etag):
        return Response(status_code=304, headers={"ETag": product.etag})
    return _json(product)


@router.patch(
    "/{sku}",
    operation_id="updateProduct",
    response_model=ProductRead,
    responses=problems(404, 412, 422),
    summary="Change name, description, price or reorder point (JSON merge patch)",
)
async def patch_product(
    sku: ProductSku, body: ProductUpdate, db: DatabaseDep, accepted: IfMatch
) -> Response:
    async def operation(conn: Connection) -> Response:
        return _json(await products.patch_product(conn, sku=sku, patch=body, etags=accepted))

    return await db.write(operation, transaction=False)


@router.delete(
    "/{sku}",
    operation_id="deleteProduct",
    status_code=204,
    responses=problems(404, 409, 412),
    summary="Delete a product",
)
async def delete_product(sku: ProductSku, db: DatabaseDep, accepted: IfMatch) -> Response:
    async def operation(conn: Connection) -> Response:
        await products.delete_product(conn, sku=sku, etags=accepted)
        return Response(status_code=204)

    return await db.write(operation, transaction=False)

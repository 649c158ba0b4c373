"""/products: add, list, look up, change and delete products."""

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response

from app.core.errors import ProductNotFound
from app.core.http import etags
from app.core.http.limits import JsonRoute
from app.core.openapi import problems
from app.database import Connection
from app.deps import (
    Credential,
    DatabaseDep,
    IdempotencyDep,
    IdempotencyKey,
    ProductSku,
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


@router.post(
    "",
    operation_id="createProduct",
    status_code=201,
    response_model=ProductRead,
    responses=problems(409, 422),
    summary="Add a product",
)
async def create_product(
    body: ProductCreate,
    idempotency: IdempotencyDep,
    credential: Credential,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    async def operation(conn: Connection) -> Response:
        product = await products.create_product(conn, new=body)
        return _json(product, 201, {"Location": f"/products/{body.sku}"})

    return await idempotency.run(
        operation,
        key=idempotency_key,
        credential=credential,
        scope="POST /products",
        request=(body,),
    )


@router.get(
    "/{sku}",
    operation_id="getProduct",
    response_model=ProductRead,
    responses={**problems(404), 304: {"description": "Not modified: your ETag is current"}},
    summary="Look up one product by SKU, ignoring case",
)
async def get_product(
    sku: ProductSku, db: DatabaseDep, if_none_match: IfNoneMatch = None
) -> Response:
    product = await products.get_product(db, sku=sku)
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

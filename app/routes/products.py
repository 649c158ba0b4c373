"""/products: add, list and look up products."""

import re

from fastapi import APIRouter, Response

from app import queries
from app.db import DatabaseDep
from app.errors import product_not_found
from app.routes.docs import problems
from app.schemas import SKU_PATTERN, ProductCreate, ProductRead
from app.streaming import JsonArrayStream

_SKU = re.compile(SKU_PATTERN)


router = APIRouter(prefix="/products", tags=["products"], responses=problems(503))


def _json(text: str, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status_code=status_code, headers=headers, media_type="application/json")


@router.post(
    "",
    status_code=201,
    response_model=ProductRead,
    responses=problems(409, 422),
    summary="Add a product",
)
async def create_product(body: ProductCreate, database: DatabaseDep) -> Response:
    product = await queries.create_product(database.pool, new=body)
    return _json(product, 201, {"Location": f"/products/{body.sku}"})


@router.get(
    "",
    response_model=list[ProductRead],
    summary="List every product, oldest first (streamed)",
)
async def list_products(database: DatabaseDep) -> Response:
    return JsonArrayStream(database.pool, queries.LIST_PRODUCTS)


@router.get(
    "/{sku}",
    response_model=ProductRead,
    responses=problems(404),
    summary="Look up one product by SKU, ignoring case",
)
async def get_product(sku: str, database: DatabaseDep) -> Response:
    # A string that cannot be a SKU names no product; no need to ask the database.
    product = (
        await queries.get_product(database.pool, sku=sku)
        if _SKU.match(sku) and len(sku) <= 64
        else None
    )
    if product is None:
        raise product_not_found(sku)
    return _json(product)

"""HTTP routes, one module per resource; handlers stay thin and call app.queries."""

from fastapi import APIRouter, Depends

from app.access import require_token
from app.routes import imports, metrics, operations, products, stock
from app.routes.docs import problems

# Everything under /products needs a bearer token when tokens are configured. Include every
# /products router into `products_api`, never into `router` directly: tests/test_access.py
# walks all routes and fails for any /products route that answers without a token.
products_api = APIRouter(dependencies=[Depends(require_token)], responses=problems(401, 403))
products_api.include_router(products.router)
products_api.include_router(stock.router)
products_api.include_router(imports.router)

router = APIRouter()
router.include_router(products_api)
router.include_router(operations.router)
router.include_router(metrics.router)

"""HTTP routes, one module per resource; handlers stay thin and call app.queries."""

from fastapi import APIRouter, Depends

from app.deps import require_token
from app.openapi import problems
from app.routes import changes, imports, operations, products, reports, stock, webhooks

# Everything under /products, /reports, /changes and /webhooks needs a bearer token when
# tokens are configured. Include every protected router into `protected`, never into
# `router` directly: tests/test_access.py walks all routes and fails for any protected
# route that answers without a token.
protected = APIRouter(dependencies=[Depends(require_token)], responses=problems(401, 403))
protected.include_router(products.router)
protected.include_router(stock.router)
protected.include_router(imports.router)
protected.include_router(reports.router)
protected.include_router(changes.router)
# Read-write tokens only, reads included (the router adds that dependency).
protected.include_router(webhooks.router)

router = APIRouter()
router.include_router(protected)
router.include_router(operations.router)

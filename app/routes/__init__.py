"""HTTP routes, one module per resource; handlers stay thin and call app.queries."""

from fastapi import APIRouter

from app.routes import operations, products, stock

router = APIRouter()
router.include_router(products.router)
router.include_router(stock.router)
router.include_router(operations.router)

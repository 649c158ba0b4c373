"""Operational endpoints: liveness and readiness."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app import queries
from app.db import DatabaseDep
from app.models import Base
from app.routes.docs import problems

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the database answers and the schema is in place",
    responses=problems(503),
)
async def readyz(database: DatabaseDep) -> JSONResponse:
    ready = await queries.schema_ready(database.pool, tables=sorted(Base.metadata.tables))
    if not ready:
        return JSONResponse({"status": "schema missing"}, status_code=503)
    return JSONResponse({"status": "ready"})

"""Operational endpoints: liveness, readiness and metrics."""

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.core import health
from app.core.openapi import problems
from app.deps import DatabaseDep, MetricsDep, ReadsDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", operation_id="checkHealth", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="checkReadiness",
    summary="Readiness: the database answers and the schema is in place",
    responses=problems(503),
)
async def readyz(db: DatabaseDep, reads: ReadsDep) -> JSONResponse:
    # Readiness is the primary's: without the replica, reads go to the primary. The replica's
    # state is shown for operators (and the same in /metrics).
    replica = reads.replica
    extra: dict[str, Any] = {}
    if replica is not None:
        extra["replica"] = {"state": replica.state, "lag_seconds": replica.lag}
    if not await health.schema_ready(db):
        return JSONResponse({"status": "schema missing", **extra}, status_code=503)
    return JSONResponse({"status": "ready", **extra})


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics: requests, latencies, pool, database errors, webhooks, streams",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(registry: MetricsDep) -> Response:
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)

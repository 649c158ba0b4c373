"""GET /bench/ceiling: the framework's ceiling for bench/ (mounted only when asked for).

A constant small JSON body through the same app, middleware and server as the real routes:
what is left between a real route and this one is the route's own work.
"""

from fastapi import APIRouter, Response

router = APIRouter(include_in_schema=False)

_BODY = b'{"id":1,"sku":"CEILING-1","name":"constant","price":"1.00","quantity":0}'


@router.get("/bench/ceiling")
async def ceiling() -> Response:
    return Response(_BODY, media_type="application/json")

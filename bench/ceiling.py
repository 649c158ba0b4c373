"""The framework's ceiling: a plain FastAPI app with one constant JSON endpoint.

Served by the same server, with the same workers, as the service: what is left between a
real route and this one is the service's own work (middleware, database, serialisation).
"""

from fastapi import FastAPI, Response

app = FastAPI()

_BODY = b'{"id":1,"sku":"CEILING-1","name":"constant","price":"1.00","quantity":0}'


@app.get("/ceiling")
async def ceiling() -> Response:
    return Response(_BODY, media_type="application/json")

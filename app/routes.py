"""Every feature's router, added to the app as one flat table of routes."""

import functools
import inspect

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from app.changes import router as changes
from app.core.openapi import problems
from app.deps import refuse_unknown_parameters, require_token
from app.imports import router as imports
from app.listing import router as listing
from app.locations import router as locations
from app.operations import router as operations
from app.products import router as products
from app.products import stock_router as stock
from app.reports import router as reports
from app.reservations import router as reservations
from app.webhooks import router as webhooks

# Everything under /products, /locations, /transfers, /reservations, /reports, /changes and
# /webhooks (app.core.access.PROTECTED, by
# path) needs a bearer token when tokens are configured: add every such router here.
# tests/test_access.py walks all routes and fails for any protected route that answers
# without a token. In this order: the hot routes first, as a request is matched against the
# routes one by one.
GUARDED_ROUTERS = (
    products,
    listing,
    stock,
    locations,
    reservations,
    imports,
    reports,
    changes,
    webhooks,
)
OPEN_ROUTERS = (operations,)

# What a route carries from its routers once they are merged in (prefix, tags, dependencies,
# responses): every parameter of add_api_route but the ones given explicitly below, and
# form_limits (no route takes a form).
_ROUTE_FIELDS = tuple(
    name
    for name in inspect.signature(APIRouter.add_api_route).parameters
    if name not in {"self", "path", "endpoint", "route_class_override", "form_limits"}
)


def install(app: FastAPI, *, tokens: bool) -> None:
    """Add every route to the app itself, its routers' settings merged in.

    With `tokens` (tokens are configured) the protected routes check them, and declare 401
    and 403; an open API has neither, so its requests skip a dependency that could only say
    yes, and its document promises no authentication. Every route refuses the query
    parameters it does not declare (app.deps.refuse_unknown_parameters), before any other
    dependency.
    """
    app.router.routes.extend(_flat_routes(tokens))


@functools.cache
def _flat_routes(tokens: bool) -> tuple[APIRoute, ...]:
    """The routes, flat, built once per process for each `tokens` and shared by every app
    made meanwhile: a route holds no state of its app (handlers reach the app's state
    through the request). Building them was most of create_app's 100 ms, and the tests
    make an app per test.

    Flat, not included routers: FastAPI (0.16x) keeps an included router as a node that it
    walks on every request, level after level; with three levels, matching took more time
    than the rest of a /healthz request (profiled: 19 nested match calls per request). One
    flat list is matched in one pass.
    """
    guard = APIRouter(
        dependencies=[Depends(require_token)] if tokens else [],
        responses=problems(401, 403) if tokens else {},
    )
    for module in GUARDED_ROUTERS:
        guard.include_router(module.router)
    router = APIRouter()
    router.include_router(guard)
    for module in OPEN_ROUTERS:
        router.include_router(module.router)
    flat = APIRouter(dependencies=[Depends(refuse_unknown_parameters)])
    for context in iter_route_contexts(router.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r}: only API routes are flattened")
        flat.add_api_route(
            route.path if context.path is None else context.path,
            route.endpoint,
            route_class_override=type(route),
            **{name: getattr(context, name) for name in _ROUTE_FIELDS},
        )
    return tuple(route for route in flat.routes if isinstance(route, APIRoute))

"""Typed dependencies: everything a handler needs, taken from the lifespan's state here only."""

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.changes.feed import Feed
from app.changes.stream import StreamShares
from app.config import Settings
from app.core.access import CALLER_KEY, Access, Caller
from app.core.errors import (
    LocationNotFound,
    ProductNotFound,
    ReservationNotFound,
    ValidationFailed,
    WebhookNotFound,
    field_error,
)
from app.core.observability import Metrics
from app.core.reads import Reads
from app.core.recent import Recent
from app.database import Database
from app.idempotency.runner import Idempotency
from app.products.queries import Creates, Lookups
from app.reports.queries import StockSummary
from app.rules import IDEMPOTENCY_KEY_PATTERN, SKU_MAX, SKU_PATTERN
from app.webhooks.ssrf import Resolver

# async throughout: FastAPI runs a plain `def` dependency in its thread pool, a hop that
# cost about a fifth of a lookup's time under load (py-spy, bench/).


def _from_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency handing out one object the lifespan put into the app's state."""

    async def shared(request: Request) -> Any:
        return getattr(request.state, name)

    return shared


DatabaseDep = Annotated[Database, Depends(_from_state("database"))]
SettingsDep = Annotated[Settings, Depends(_from_state("settings"))]
# Products by SKU, and new products: concurrent ones coalesced into one statement.
LookupsDep = Annotated[Lookups, Depends(_from_state("lookups"))]
CreatesDep = Annotated[Creates, Depends(_from_state("creates"))]
IdempotencyDep = Annotated[Idempotency, Depends(_from_state("idempotency"))]
MetricsDep = Annotated[Metrics, Depends(_from_state("metrics"))]
FeedDep = Annotated[Feed, Depends(_from_state("feed"))]
StreamSharesDep = Annotated[StreamShares, Depends(_from_state("stream_shares"))]
# Reads that may be a little stale (exports, pages, GET /changes, reports): a replica's.
ReadsDep = Annotated[Reads, Depends(_from_state("reads"))]
# Host names to addresses for webhook URLs (app.webhooks.ssrf): bounded in time and in number.
ResolverDep = Annotated[Resolver, Depends(_from_state("resolver"))]
# GET /reports/stock as last computed (app.core.recent), for at most a second.
StockReportDep = Annotated[Recent[StockSummary], Depends(_from_state("stock_report"))]

# auto_error=False: a missing or non-Bearer header comes back as None, and the 401 is ours
# (problem+json, WWW-Authenticate). The scheme also puts `bearerAuth` into the OpenAPI.
_bearer = HTTPBearer(
    scheme_name="bearerAuth",
    description="A token from INVENTORY_API_TOKENS (read-write) or INVENTORY_READ_TOKENS "
    "(GET only). Not needed when the server runs without tokens.",
    auto_error=False,
)
_Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _caller(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    # TokenCheck has checked the token already (app.core.access); a route outside its prefixes
    # would not have been, so it is checked here then, never skipped.
    caller: Caller | None = request.scope.get(CALLER_KEY)
    if caller is not None:
        return caller
    access: Access = request.state.access
    return access.authenticate(None if credentials is None else credentials.credentials)


async def require_token(request: Request, credentials: _Bearer) -> str:
    """Every protected router's dependency; returns the request's credential (app.core.access)."""
    access: Access = request.state.access
    return access.authorize(_caller(request, credentials), request.method)


async def require_writer(request: Request, credentials: _Bearer) -> str:
    """Like require_token, but read-only tokens are refused even for reads."""
    access: Access = request.state.access
    return access.authorize(_caller(request, credentials), request.method, writers_only=True)


# The credential a request acts as: its token's digest, "" for an open API. Cached per
# request, so the router's check is not run twice.
Credential = Annotated[str, Depends(require_token)]


def shortcut_credential(request: Request) -> str | None:
    """What require_token returns, for a shortcut (app.core.http.shortcuts) of a guarded
    route; None when the token has not been checked yet (the route's dependencies will).

    Raises Forbidden as require_token does.
    """
    access: Access = request.state.access
    if CALLER_KEY not in request.scope and not access.open:
        return None
    return access.authorize(_caller(request, None), request.method)


_SKU = re.compile(SKU_PATTERN)
# bigint, as the id columns are.
_ID = re.compile(r"^[0-9]{1,18}$")


def is_name(value: str) -> bool:
    """Whether a path segment can be a SKU or a location code."""
    return len(value) <= SKU_MAX and _SKU.match(value) is not None


def _named(value: str, missing: Callable[[str], Exception]) -> str:
    # A path segment that cannot be a SKU or a code names nothing: 404 without a query.
    if not is_name(value):
        raise missing(value)
    return value


def _numbered(value: str, missing: Callable[[str], Exception]) -> int:
    # A path segment that cannot be an id names nothing: 404 without a query.
    if not _ID.match(value):
        raise missing(value)
    return int(value)


async def _product_sku(
    sku: Annotated[str, Path(description="The product's SKU, in any letter case")],
) -> str:
    return _named(sku, ProductNotFound)


async def _location_code(
    code: Annotated[str, Path(description="The location's code, in any letter case")],
) -> str:
    return _named(code, LocationNotFound)


async def _webhook_id(
    webhook_id: Annotated[str, Path(alias="id", description="The webhook's id")],
) -> int:
    return _numbered(webhook_id, WebhookNotFound)


async def _reservation_id(
    reservation_id: Annotated[str, Path(alias="id", description="The reservation's id")],
) -> int:
    return _numbered(reservation_id, ReservationNotFound)


ProductSku = Annotated[str, Depends(_product_sku)]
LocationCode = Annotated[str, Depends(_location_code)]
WebhookId = Annotated[int, Depends(_webhook_id)]
ReservationId = Annotated[int, Depends(_reservation_id)]
# `?location=CODE` wherever a listing or a report narrows to one location.
LocationFilter = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=SKU_MAX,
        pattern=SKU_PATTERN,
        description="Only what is at this location (its code, in any letter case)",
    ),
]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Makes the request safe to retry: 1-255 printable ASCII characters.",
    ),
]


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route declares: its own and its dependencies'."""
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def refuse_unknown_parameters(request: Request) -> None:
    """Every route's first dependency (app.main): a query parameter the route does not
    declare is 422, so a misspelt one (`?limt=10`, `?buckt=week`) never silently changes
    what the answer holds.

    Routes outside the OpenAPI document (the /docs pages) are not the API and take whatever
    their UI sends.
    """
    if not request.scope["query_string"]:
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.include_in_schema:
        return
    # Worked out per request (a few microseconds, only with a query string): routes compare
    # by value, so they cannot key a cache, and any route added later is covered alike.
    unknown = sorted(set(request.query_params) - _query_names(route.dependant))
    if unknown:
        raise ValidationFailed(
            "Unknown query parameter.",
            [field_error(n, "is not a known parameter") for n in unknown],
        )

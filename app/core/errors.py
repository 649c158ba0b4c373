"""Every failure as an RFC 9457 problem: one class per problem code, one SQLSTATE table.

Code anywhere raises one of the classes below; `install` renders them, and maps what
PostgreSQL and the frameworks raise, in exactly one place. No other module builds a
problem body.
"""

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from psycopg_pool import PoolTimeout
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from app.core.http.matching import route_methods
from app.models import MAIN_LOCATION
from app.rules import QUANTITY_MAX, rule_for

logger = logging.getLogger("app.errors")

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """A failure the API answers with a problem: its class gives status and code.

    `retryable` problems carry `Retry-After` (the configured seconds) when rendered.
    Extra keyword arguments become members of the problem body (`available`, `errors`).
    """

    status: int = 500
    code: str = "internal_error"
    retryable: bool = False

    def __init_subclass__(cls, *, status: int, code: str, retryable: bool = False) -> None:
        # `class Gone(ApiError, status=410, code="gone")`: a problem's identity in one line.
        super().__init_subclass__()
        cls.status, cls.code, cls.retryable = status, code, retryable

    def __init__(
        self, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {
            "type": "about:blank",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            **self.extra,
        }

    def response(self, *, retry_after: int) -> Response:
        headers = dict(self.headers)
        if self.retryable:
            headers.setdefault("Retry-After", str(retry_after))
        return JSONResponse(
            self.body(), status_code=self.status, headers=headers, media_type=PROBLEM_JSON
        )


def field_error(field: str, message: str, **more: Any) -> dict[str, Any]:
    """One member of a validation problem's `errors` list."""
    return {"field": field, "message": message, **more}


class ValidationFailed(ApiError, status=422, code="validation_failed"):
    def __init__(self, detail: str, errors: Sequence[Mapping[str, Any]], **extra: Any) -> None:
        super().__init__(detail, errors=[dict(e) for e in errors], **extra)

    @classmethod
    def field(
        cls, field: str, message: str, detail: str = "The request is invalid."
    ) -> "ValidationFailed":
        return cls(detail, [field_error(field, message)])


class DuplicateSku(ApiError, status=409, code="duplicate_sku"):
    def __init__(self, sku: str | None = None, **extra: Any) -> None:
        what = f"SKU '{sku}'" if sku else "this SKU"
        super().__init__(f"A product with {what} already exists.", **extra)


class InsufficientStock(ApiError, status=409, code="insufficient_stock"):
    def __init__(self, sku: str, *, available: int, delta: int, location: str) -> None:
        super().__init__(
            f"Product '{sku}' has {available} available at {location}; cannot take {abs(delta)}.",
            available=available,
        )


class CountsShort(ApiError, status=409, code="insufficient_stock"):
    """A stock count (import) that would leave a location with fewer units than it has
    reserved: the records, by line."""

    def __init__(self, errors: Sequence[Mapping[str, Any]], **extra: Any) -> None:
        super().__init__(
            "A count would leave fewer units than are reserved; nothing was imported.",
            errors=[dict(e) for e in errors],
            **extra,
        )


class LinesShort(ApiError, status=409, code="insufficient_stock"):
    """A reservation that cannot hold every line: each short one, with what is available."""

    def __init__(self, lines: Sequence[Mapping[str, Any]]) -> None:
        skus = ", ".join(str(line["sku"]) for line in lines)
        super().__init__(f"Not enough stock to hold every line ({skus}).", lines=list(lines))


class ReservationNotFound(ApiError, status=404, code="reservation_not_found"):
    def __init__(self, reservation_id: str | int) -> None:
        super().__init__(f"No reservation has id '{reservation_id}'.")


class ReservationNotActive(ApiError, status=409, code="reservation_not_active"):
    def __init__(self, reservation_id: int, status: str) -> None:
        # `status` is RFC 9457's member (the HTTP status): the reservation's goes beside it.
        super().__init__(f"Reservation {reservation_id} is {status}.", reservation_status=status)


class ProductInUse(ApiError, status=409, code="product_in_use"):
    def __init__(self) -> None:
        super().__init__("The product has active reservations: release or fulfil them first.")


class StockLimitExceeded(ApiError, status=409, code="stock_limit_exceeded"):
    """The mirror of InsufficientStock: the sum would pass the quantity's upper bound.

    A conflict with the stock held, not bad input: the same delta suits a product with less
    (so no schema can refuse it, and the OpenAPI document declares the 409).
    """

    def __init__(self, sku: str, *, limit: int, delta: int) -> None:
        super().__init__(f"Product '{sku}' cannot hold {delta} more: at most {limit} in stock.")


class ProductNotFound(ApiError, status=404, code="product_not_found"):
    def __init__(self, sku: str) -> None:
        super().__init__(f"No product has SKU '{sku}'.")


class DuplicateLocation(ApiError, status=409, code="duplicate_location"):
    def __init__(self) -> None:
        super().__init__("A location with that code already exists (codes ignore letter case).")


class LocationInUse(ApiError, status=409, code="location_in_use"):
    def __init__(self) -> None:
        super().__init__(
            "The location is in use: MAIN always stays, and another location goes only once "
            "it holds no units and no reservations."
        )


class LocationNotFound(ApiError, status=404, code="location_not_found"):
    def __init__(self, code: str) -> None:
        super().__init__(f"No location has code '{code}'.")


class WebhookNotFound(ApiError, status=404, code="webhook_not_found"):
    def __init__(self, webhook_id: str | int) -> None:
        super().__init__(f"No webhook has id '{webhook_id}'.")


class TooManyWebhooks(ApiError, status=409, code="too_many_webhooks"):
    """The database holds at most 100 subscriptions (schema.sql: webhooks_limit)."""

    def __init__(self) -> None:
        super().__init__("There are 100 webhooks already: delete one to add another.")


class CursorExpired(ApiError, status=410, code="cursor_expired"):
    """The change log no longer holds the events after the client's cursor."""

    def __init__(self, after: int, oldest: int) -> None:
        super().__init__(
            f"Events after {after} are no longer retained: the log starts after {oldest}. "
            "Read it again from the start (no `after`).",
            oldest_after=str(oldest),
        )


class NotFound(ApiError, status=404, code="not_found"):
    """No route serves the path."""


class MethodNotAllowed(ApiError, status=405, code="method_not_allowed"):
    """The path exists; the method does not (`Allow` names those that do)."""


class NotAcceptable(ApiError, status=406, code="not_acceptable"):
    """The client accepts none of the representations offered."""


class RequestTimeout(ApiError, status=408, code="request_timeout"):
    def __init__(self, seconds: float, *, min_rate: int | None = None) -> None:
        # The rest of the body may still be on its way: the connection cannot be reused.
        super().__init__(
            f"The request body did not arrive within {seconds:g} s."
            if min_rate is None
            else f"The request body arrived slower than {min_rate} bytes/s.",
            headers={"Connection": "close"},
        )


class PreconditionFailed(ApiError, status=412, code="precondition_failed"):
    def __init__(self, sku: str) -> None:
        super().__init__(
            f"Product '{sku}' has changed since the ETag in If-Match; nothing was changed."
        )


class PayloadTooLarge(ApiError, status=413, code="payload_too_large"):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than the limit of {limit} bytes.", max_bytes=limit
        )


class UnsupportedMediaType(ApiError, status=415, code="unsupported_media_type"):
    """The body's Content-Type is not one the endpoint reads."""


class Unauthorized(ApiError, status=401, code="unauthorized"):
    def __init__(self, detail: str, *, invalid_token: bool) -> None:
        challenge = 'Bearer realm="inventory"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError, status=403, code="forbidden"):
    """The credential may not do this (a read-only token writing)."""


class IdempotencyKeyReused(ApiError, status=422, code="idempotency_key_reused"):
    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was used with a different request.")


class RequestInProgress(ApiError, status=409, code="request_in_progress", retryable=True):
    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being processed. Retry later."
        )


class DatabaseUnavailable(ApiError, status=503, code="database_unavailable", retryable=True):
    def __init__(self, detail: str = "The database is unavailable. Retry later.") -> None:
        super().__init__(detail)


class ServerBusy(ApiError, status=503, code="server_busy", retryable=True):
    """A limit of concurrent work that is not the database's was reached."""


class ConflictRetry(ApiError, status=503, code="conflict_retry", retryable=True):
    def __init__(self) -> None:
        super().__init__("The request kept conflicting with concurrent changes. Retry it.")


class InternalError(ApiError, status=500, code="internal_error"):
    def __init__(self) -> None:
        super().__init__("An unexpected error occurred.")


# --- PostgreSQL errors ----------------------------------------------------------------------
# Exact SQLSTATEs first, then two-character classes, as PostgREST's mapSQLtoHTTP does; a
# constraint's name says which problem a violation is. A state in neither table is a bug: a
# logged 500. What the caller knows about the statement (`sku`, `delta`) fills the detail.

# serialization_failure, deadlock_detected: PostgreSQL rolled the transaction back and says
# that running it again may well succeed. Nothing else is retried (app.database).
RETRYABLE = frozenset({"40001", "40P01"})
# The unique index on lower(sku) (schema.sql): it, not a look first, decides duplicates.
DUPLICATE_SKU = "products_sku_lower_key"
# The trigger refusing a 101st subscription names this (schema.sql: webhooks_limit).
WEBHOOKS_LIMIT = "webhooks_limit"
# Locations' codes are unique ignoring case (schema.sql: locations_code_lower_key).
DUPLICATE_LOCATION = "locations_code_lower_key"
# 0 <= reserved <= quantity at every location. schema.sql's stock functions name it when they
# refuse, with DETAIL `available=N` (one location) or the JSON list of a reservation's
# short lines; the CHECK itself is the backstop.
STOCK_RESERVED = "product_stock_reserved_check"
# A reservation that is not active (DETAIL its status), raised by reservation_change().
RESERVATION_ACTIVE = "reservations_active"
# The guards refusing to delete a location or a product still in use.
LOCATION_IN_USE, PRODUCT_IN_USE = "locations_in_use", "products_in_use"
_AVAILABLE = re.compile(r"available=(\d+)")

Context = Mapping[str, Any]
Mapper = Callable[[psycopg.Error, Context], ApiError | None]


def _unique_violation(exc: psycopg.Error, context: Context) -> ApiError | None:
    if exc.diag.constraint_name == DUPLICATE_SKU:
        return DuplicateSku(context.get("sku"))
    if exc.diag.constraint_name == DUPLICATE_LOCATION:
        return DuplicateLocation()
    return None


def _check_violation(exc: psycopg.Error, context: Context) -> ApiError:
    constraint, detail = exc.diag.constraint_name, exc.diag.message_detail or ""
    if constraint == WEBHOOKS_LIMIT:
        return TooManyWebhooks()
    if constraint == STOCK_RESERVED:
        if detail.startswith("["):
            return LinesShort(json.loads(detail))
        found = _AVAILABLE.fullmatch(detail)
        return InsufficientStock(
            context.get("sku", ""),
            available=int(found[1]) if found else 0,
            delta=context.get("delta", 0),
            location=context.get("short_at", MAIN_LOCATION),
        )
    if constraint == RESERVATION_ACTIVE:
        return ReservationNotActive(context.get("reservation_id", 0), detail)
    return _invalid_value(exc, context)


def _restrict_violation(exc: psycopg.Error, context: Context) -> ApiError | None:
    if exc.diag.constraint_name == LOCATION_IN_USE:
        return LocationInUse()
    if exc.diag.constraint_name == PRODUCT_IN_USE:
        return ProductInUse()
    return None


def _not_found(exc: psycopg.Error, context: Context) -> ApiError | None:
    """What schema.sql's stock functions did not find: the table says which kind; the
    column (a transfer's `from` or `to`) or the DETAIL which one."""
    table, named = exc.diag.table_name, exc.diag.message_detail
    if table == "products":
        return ProductNotFound(named or context.get("sku", ""))
    if table == "locations":
        locations = context.get("locations", {})
        return LocationNotFound(named or locations.get(exc.diag.column_name, ""))
    if table == "reservations":
        return ReservationNotFound(context.get("reservation_id", ""))
    return None


def _out_of_range(exc: psycopg.Error, context: Context) -> ApiError:
    # A stock adjustment's sum past integer: a conflict with the stock held, not bad input.
    if "delta" in context:
        return StockLimitExceeded(context["sku"], limit=QUANTITY_MAX, delta=context["delta"])
    return _invalid_value(exc, context)


def _invalid_value(exc: psycopg.Error, context: Context) -> ApiError:
    constraint = exc.diag.constraint_name or ""
    rule = rule_for(constraint)
    name = constraint or exc.sqlstate or "a database rule"
    field = rule.field if rule else (exc.diag.column_name or "body")
    message = rule.message if rule else "violates a database rule"
    return ValidationFailed(
        f"The database refused the value: {name}.", [field_error(field, f"{message} ({name})")]
    )


def _conflict_retry(exc: psycopg.Error, context: Context) -> ApiError:
    return ConflictRetry()


def _unavailable(exc: psycopg.Error, context: Context) -> ApiError:
    return DatabaseUnavailable()


_BY_SQLSTATE: dict[str, Mapper] = {
    "23505": _unique_violation,
    "23514": _check_violation,
    "23001": _restrict_violation,
    "P0002": _not_found,  # no_data_found, raised by schema.sql's stock functions
    "23502": _invalid_value,  # not_null_violation
    "22003": _out_of_range,  # numeric_value_out_of_range
    "40001": _conflict_retry,  # serialization_failure, after the retries
    "40P01": _conflict_retry,  # deadlock_detected, after the retries
    # lock_not_available: only an Idempotency-Key's claim waits with a lock_timeout, for
    # the request that holds the key.
    "55P03": lambda exc, context: RequestInProgress(),
    # idle_in_transaction_session_timeout (db/roles.sql): the server ended the session.
    "25P03": _unavailable,
}
_BY_CLASS: dict[str, Mapper] = {
    "22": _invalid_value,  # data exception: out of range, bad text for a type
    "08": _unavailable,  # connection exception
    "53": _unavailable,  # insufficient resources
    "57": _unavailable,  # operator intervention: shutdown, timeout
}


def from_database(exc: BaseException, **context: Any) -> ApiError | None:
    """The problem a database failure means for the client, or None when it is a bug.

    `context` is what the caller knows that the error does not carry: `sku` (the product
    the statement was about), `delta` (a stock adjustment's).
    """
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, PoolTimeout):
        return DatabaseUnavailable()
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate
    if state:
        handler = _BY_SQLSTATE.get(state) or _BY_CLASS.get(state[:2])
        return handler(exc, context) if handler else None
    # No SQLSTATE: psycopg refused a value before sending it (a NUL byte, an int past
    # bigint), or the connection broke or could not be made.
    if isinstance(exc, psycopg.DataError):
        return ValidationFailed.field(
            "body", "holds a value the database cannot store", "A value cannot be stored."
        )
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailable()
    return None


def refused(exc: psycopg.Error, **context: Any) -> Exception:
    """What to raise for a statement the database refused: its problem, with what the
    caller knows (see from_database), or the error itself when it maps to none, or when
    running the work again may succeed (RETRYABLE: the write runner's retry loop takes it)."""
    if exc.sqlstate in RETRYABLE:
        return exc
    return from_database(exc, **context) or exc


def sqlstate_class(exc: BaseException) -> str:
    """A metrics label for a database failure: the SQLSTATE class, pool_timeout or none."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, PoolTimeout):
        return "pool_timeout"
    state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    return state[:2] if state else "none"


# --- Rendering ------------------------------------------------------------------------------


def _field_of(loc: tuple[Any, ...]) -> str:
    # ("body", "price") -> "price"; ("query", "limit") -> "limit"; ("body",) -> "body"
    parts = [str(p) for p in loc[1:]] if len(loc) > 1 else [str(p) for p in loc]
    return ".".join(parts)


def _validation_message(error: Mapping[str, Any]) -> str:
    if error.get("type") == "extra_forbidden":
        return "is not a known field"
    if error.get("type") == "missing":
        return "is required"
    # pydantic prefixes messages raised by our validators; the prefix tells a client nothing.
    return str(error.get("msg", "is invalid")).removeprefix("Value error, ")


def from_validation(exc: RequestValidationError) -> ValidationFailed:
    errors = [
        field_error(_field_of(tuple(e.get("loc", ()))), _validation_message(e))
        for e in exc.errors()
    ]
    return ValidationFailed("The request is invalid.", errors)


def from_http(exc: StarletteHTTPException) -> ApiError:
    """Starlette's own 404 (no route) and 405 (route, other method) as our problems."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        return MethodNotAllowed("This method is not allowed here.", headers=headers)
    if exc.status_code == 404:
        return NotFound("Nothing is here.", headers=headers)
    error = ApiError(str(exc.detail), headers=headers)
    error.status = exc.status_code
    error.code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    return error


def install(
    app: FastAPI,
    *,
    retry_after: int,
    request_id: Callable[[Request], str | None],
    count_database_error: Callable[[str], None],
) -> None:
    """Register the handlers that turn every exception into a problem response."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response(retry_after=retry_after)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return from_validation(exc).response(retry_after=retry_after)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on the path only.
            allowed = ", ".join(sorted(route_methods(request.app.routes, request.url.path)))
            exc.headers = {**(exc.headers or {}), "Allow": allowed}
        return from_http(exc).response(retry_after=retry_after)

    async def database_error(request: Request, exc: Exception) -> Response:
        count_database_error(sqlstate_class(exc))
        mapped = from_database(exc)
        if mapped is None:
            return await unexpected(request, exc)
        return mapped.response(retry_after=retry_after)

    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.error(
            "unhandled error on %s %s",
            request.method,
            request.url.path,
            exc_info=exc,
            extra={"request_id": request_id(request)},
        )
        return InternalError().response(retry_after=retry_after)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(psycopg.Error, database_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(Exception, unexpected)

"""Every failure as an RFC 9457 problem: SQLSTATE and validation errors to API codes."""

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.observability import REQUEST_ID_KEY, Metrics, count_database_error

logger = logging.getLogger("app.errors")

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """An expected failure with its status, stable code and a detail for people."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def product_not_found(sku: str) -> ApiError:
    return ApiError(404, "product_not_found", f"No product has SKU '{sku}'.")


# Constraint name -> (API field, what the rule says). Clients see the constraint name.
_CONSTRAINT_FIELDS: dict[str, tuple[str, str]] = {
    "products_sku_format_check": ("sku", "must be 1-64 characters of A-Z a-z 0-9 . _ -"),
    "products_name_check": ("name", "must be 1-200 characters and not blank"),
    "products_description_length_check": ("description", "must be at most 2000 characters"),
    "products_price_check": ("price", "must be 0 to 9999999999.99 with at most 2 decimals"),
    "products_quantity_check": ("quantity", "must not be negative"),
}

# Exact SQLSTATEs first, then two-character classes (PostgREST's mapSQLtoHTTP order).
_TRANSIENT_CLASSES = {"08", "53", "57"}
_RETRY_STATES = {"40001", "40P01"}


def _unavailable(retry_after: int) -> ApiError:
    return ApiError(
        503,
        "database_unavailable",
        "The database is unavailable. Retry later.",
        headers={"Retry-After": str(retry_after)},
    )


def database_problem(exc: BaseException, *, retry_after: int) -> ApiError | None:
    """Translate a database failure into the API's problem, or None if it is a bug (500)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, PoolTimeout):
        return _unavailable(retry_after)
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate or ""
    constraint = exc.diag.constraint_name or ""
    if state == "23505":
        if constraint == "products_sku_lower_key":
            return ApiError(409, "duplicate_sku", "A product with this SKU already exists.")
        return None
    if state in _RETRY_STATES:
        return ApiError(
            503,
            "conflict_retry",
            "The request kept conflicting with concurrent changes. Retry it.",
            headers={"Retry-After": str(retry_after)},
        )
    if state in {"23514", "23502"} or state.startswith("22"):
        field, message = _CONSTRAINT_FIELDS.get(
            constraint, (exc.diag.column_name or "body", "violates a database rule")
        )
        name = constraint or state
        return ApiError(
            422,
            "validation_failed",
            f"The database refused the value: {name}.",
            errors=[{"field": field, "message": f"{message} ({name})"}],
        )
    # Refused by psycopg before sending (a NUL byte in a string, an int past bigint): bad input.
    if not state and isinstance(exc, psycopg.DataError):
        return ApiError(
            422,
            "validation_failed",
            "A value cannot be stored in the database.",
            errors=[{"field": "body", "message": "holds a value the database cannot store"}],
        )
    # No SQLSTATE at all: the connection broke or could not be made.
    if state[:2] in _TRANSIENT_CLASSES or (not state and isinstance(exc, psycopg.OperationalError)):
        return _unavailable(retry_after)
    return None


def _field_of(loc: tuple[Any, ...]) -> str:
    # ("body", "price") -> "price"; ("query", "limit") -> "limit"; ("body",) -> "body"
    parts = [str(p) for p in loc[1:]] if len(loc) > 1 else [str(p) for p in loc]
    return ".".join(parts)


def _validation_message(error: dict[str, Any]) -> str:
    if error.get("type") == "extra_forbidden":
        return "is not a known field"
    if error.get("type") == "missing":
        return "is required"
    # pydantic prefixes messages raised by our validators; the prefix tells a client nothing.
    return str(error.get("msg", "is invalid")).removeprefix("Value error, ")


def install(app: FastAPI, *, retry_after: int) -> None:
    """Register the handlers that turn every exception into a problem response."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return problem(exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extra)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": _field_of(tuple(e.get("loc", ()))), "message": _validation_message(e)}
            for e in exc.errors()
        ]
        return problem(422, "validation_failed", "The request is invalid.", errors=errors)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(
            status, HTTPStatus(status).phrase.lower().replace(" ", "_")
        )
        return problem(status, code, str(exc.detail), headers=dict(exc.headers or {}))

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        _count_database_error(request, exc)
        mapped = database_problem(exc, retry_after=retry_after)
        if mapped is None:
            return await unexpected(request, exc)
        return await api_error(request, mapped)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The request-id middleware adds X-Request-ID to this answer too; the log line names it.
        request_id = request.scope.get(REQUEST_ID_KEY)
        logger.error(
            "unhandled error on %s %s",
            request.method,
            request.url.path,
            exc_info=exc,
            extra={"request_id": request_id},
        )
        return problem(500, "internal_error", "An unexpected error occurred.")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(psycopg.Error, database_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(Exception, unexpected)


def _count_database_error(request: Request, exc: BaseException) -> None:
    # inventory_db_errors_total by SQLSTATE class (app/observability.py).
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is None:
        return
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    count_database_error(metrics, sqlstate, pool_timeout=isinstance(exc, PoolTimeout))


def constraint_rule(name: str) -> tuple[str, str] | None:
    """(API field, what the rule says) for one of the products table's CHECK constraints."""
    return _CONSTRAINT_FIELDS.get(name)

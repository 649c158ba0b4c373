"""The OpenAPI document, completed: the server as configured, every problem it can answer."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.core.errors import PROBLEM_JSON
from app.rules import STORABLE_TEXT_PATTERN

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_STRING = {"schema": {"type": "string"}}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
    }
    if headers:
        response["headers"] = headers
    return response


def install(app: FastAPI, *, secured: bool, loopback_only: bool) -> None:
    """Replace app.core.openapi with a builder that adds what FastAPI cannot know by itself.

    - `secured` (tokens configured): bearerAuth on the protected operations, 401 and 403;
      otherwise no security at all, as the open server asks for none (`loopback_only`: an
      open server without INVENTORY_ALLOW_OPEN still answers 403 beyond loopback);
    - every 4xx/5xx is problem+json only, with the Problem schema (FastAPI would also list
      application/json, and its own HTTPValidationError shape for 422);
    - an operation with a body may answer 408, 413 and 415 (app/core/http/limits.py answers them),
      and no string in a JSON body may hold NUL (app/core/http/limits.py refuses it);
    - any operation may answer 405 with `Allow` (another method on its path; app/core/errors.py),
      422 (a query parameter it does not take; app/deps.py) and 500 `internal_error`; a
      503 carries `Retry-After`.
    Applies to routes added later too, whoever adds them.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        if "Problem" not in schemas:
            from app.core.problems import FieldError, Problem

            schemas["FieldError"] = FieldError.model_json_schema()
            schemas["Problem"] = Problem.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas["Problem"].pop("$defs", None)
        if not secured:
            components.pop("securitySchemes", None)
        bodies: set[str] = set()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                if not secured:
                    operation.pop("security", None)
                    responses.pop("401", None)
                    if loopback_only:
                        responses["403"] = _problem("Not on loopback (`forbidden`)")
                    else:
                        responses.pop("403", None)
                responses["422"] = _problem("Validation failed (`validation_failed`)")
                # Every error is problem+json and nothing else (docs/api.md "Errors").
                for status, response in responses.items():
                    if status[0] in "45":
                        response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
                if "503" in responses:
                    responses["503"]["headers"] = {"Retry-After": {"required": True, **_STRING}}
                if "requestBody" in operation:
                    responses.setdefault("408", _problem("Body too slow (`request_timeout`)"))
                    responses.setdefault("413", _problem("Body too large (`payload_too_large`)"))
                    responses.setdefault(
                        "415", _problem("Wrong content type (`unsupported_media_type`)")
                    )
                    json_body = operation["requestBody"]["content"].get("application/json", {})
                    ref = json_body.get("schema", {}).get("$ref", "")
                    bodies.add(ref.rsplit("/", 1)[-1])
                responses.setdefault(
                    "405",
                    _problem(
                        "Another method on this path (`method_not_allowed`)",
                        {"Allow": {"required": True, "description": "Its methods", **_STRING}},
                    ),
                )
                responses.setdefault("500", _problem("Unexpected failure (`internal_error`)"))
        for name in bodies & set(schemas):
            _storable_strings(schemas[name])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _storable_strings(schema: dict[str, Any]) -> None:
    """Every string of a request body without a pattern of its own gets the NUL-free one."""
    if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
        schema["pattern"] = STORABLE_TEXT_PATTERN
    for key in ("properties",):
        for child in schema.get(key, {}).values():
            _storable_strings(child)
    for key in ("anyOf", "oneOf", "allOf"):
        for child in schema.get(key, []):
            _storable_strings(child)
    if isinstance(schema.get("items"), dict):
        _storable_strings(schema["items"])


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries declaring problem+json bodies for these statuses."""
    from app.core.problems import Problem

    return {s: {"model": Problem, "content": {PROBLEM_JSON: {}}} for s in statuses}

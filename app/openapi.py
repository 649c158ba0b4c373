"""The OpenAPI document, completed: every problem an operation can answer is declared."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.errors import PROBLEM_JSON

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}}


def install(app: FastAPI) -> None:
    """Replace app.openapi with a builder that adds what FastAPI cannot know by itself.

    - every 4xx/5xx is problem+json only, with the Problem schema (FastAPI would also list
      application/json, and its own HTTPValidationError shape for 422);
    - an operation with a body may answer 413 and 415 (app/limits.py answers them);
    - any operation may answer 500 `internal_error`.
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
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        if "Problem" not in schemas:
            from app.schemas import FieldError, Problem

            schemas["FieldError"] = FieldError.model_json_schema()
            schemas["Problem"] = Problem.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas["Problem"].pop("$defs", None)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = _problem("Validation failed (`validation_failed`)")
                # Every error is problem+json and nothing else (API.md "Errors").
                for status, response in responses.items():
                    if status[0] in "45":
                        response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
                if "requestBody" in operation:
                    responses.setdefault("413", _problem("Body too large (`payload_too_large`)"))
                    responses.setdefault(
                        "415", _problem("Wrong content type (`unsupported_media_type`)")
                    )
                responses.setdefault("500", _problem("Unexpected failure (`internal_error`)"))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries declaring problem+json bodies for these statuses."""
    from app.schemas import Problem

    return {s: {"model": Problem, "content": {PROBLEM_JSON: {}}} for s in statuses}

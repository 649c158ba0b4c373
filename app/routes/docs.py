"""OpenAPI helpers shared by the routers."""

from typing import Any

from app.errors import PROBLEM_JSON
from app.schemas import Problem


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries declaring problem+json bodies for these statuses."""
    return {s: {"model": Problem, "content": {PROBLEM_JSON: {}}} for s in statuses}

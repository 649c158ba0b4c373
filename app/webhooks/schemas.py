"""Webhook bodies: subscriptions and their delivery log, as the OpenAPI document describes them."""

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from app.rules import (
    ALL_EVENTS,
    WEBHOOK_DESCRIPTION_MAX,
    WEBHOOK_SCHEMES,
    WEBHOOK_URL_MAX,
    EventType,
)


def _http_url(value: str) -> str:
    # The shape only; where it leads (a private address?) is app.webhooks.ssrf's question.
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        raise ValueError("must be an http or https URL") from None
    if parts.scheme.lower() not in WEBHOOK_SCHEMES or not parts.hostname:
        raise ValueError("must be an http or https URL with a host")
    if any(c.isspace() or ord(c) < 0x21 for c in value):
        raise ValueError("must not contain spaces or control characters")
    return value


# http or https (any case), then no space or control character.
WEBHOOK_URL_PATTERN = (
    "^(?:"
    + "|".join("".join(f"[{c.upper()}{c}]" for c in scheme) for scheme in WEBHOOK_SCHEMES)
    + r")://[^\x00-\x20\s]+$"
)


def _unique(events: list[str]) -> list[str]:
    return list(dict.fromkeys(events))


class WebhookCreate(BaseModel):
    """POST /webhooks body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: Annotated[
        str,
        StringConstraints(max_length=WEBHOOK_URL_MAX),
        AfterValidator(_http_url),
        Field(
            description="http or https; its host must resolve, to a public address unless "
            "INVENTORY_WEBHOOK_ALLOW_PRIVATE=1 (422 otherwise)",
            examples=["https://example.com/hooks/inventory"],
            # Documented only; _http_url decides.
            json_schema_extra={"format": "uri", "pattern": WEBHOOK_URL_PATTERN},
        ),
    ]
    events: Annotated[
        list[Literal["*", EventType]],
        Field(min_length=1, max_length=4, examples=[["product.updated"], [ALL_EVENTS]]),
        AfterValidator(_unique),
    ]
    description: Annotated[str, StringConstraints(max_length=WEBHOOK_DESCRIPTION_MAX)] | None = None


class WebhookRead(BaseModel):
    """A webhook subscription as the API returns it (never with its secret)."""

    id: int
    url: str
    events: list[str]
    description: str | None
    created_at: datetime


class WebhookCreated(BaseModel):
    """The answer to POST /webhooks: the only time the secret is shown."""

    id: int
    url: str
    events: list[str]
    description: str | None
    secret: Annotated[
        str, Field(description="whsec_ + base64: verify each delivery's webhook-signature")
    ]
    created_at: datetime


class DeliveryRead(BaseModel):
    """One delivery attempt (built by PostgreSQL's webhook_attempt_json)."""

    seq: str
    attempt: int
    status_code: Annotated[int | None, Field(description="None when no answer came")]
    error: Annotated[str | None, Field(description="Why no answer came")]
    duration_ms: int
    at: datetime
    outcome: Annotated[
        Literal["delivered", "retry", "failed"],
        Field(description="delivered; retry: another attempt follows; failed: given up"),
    ]

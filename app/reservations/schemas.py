"""Request and response bodies of /reservations."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.products.schemas import Integral, LocationCode, Sku
from app.rules import QUANTITY_MAX

# Seconds a hold lasts: at most a week; 15 minutes unless asked.
EXPIRES_IN_MAX, EXPIRES_IN_DEFAULT = 604_800, 900
LINES_MAX = 100
Status = Literal["active", "fulfilled", "released", "expired"]
ExpiresIn = Annotated[
    int,
    Field(ge=1, le=EXPIRES_IN_MAX, description="Seconds from now until the hold ends"),
    Integral,
]


class ReservationLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=QUANTITY_MAX), Integral]
    location: Annotated[
        LocationCode | None, Field(description="Hold it here; omitted: where units are")
    ] = None


class ReservationCreate(BaseModel):
    """POST /reservations body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reference: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    expires_in: ExpiresIn = EXPIRES_IN_DEFAULT
    lines: Annotated[list[ReservationLineIn], Field(min_length=1, max_length=LINES_MAX)]


class ReservationPatch(BaseModel):
    """PATCH /reservations/{id} body: a new expiry, counted from now."""

    model_config = ConfigDict(extra="forbid", strict=True)

    expires_in: ExpiresIn


class AllocationRead(BaseModel):
    location: str
    quantity: int


class ReservationLineRead(BaseModel):
    sku: str
    quantity: int
    allocations: list[AllocationRead]


class ReservationRead(BaseModel):
    id: int
    reference: str | None
    status: Status
    expires_at: datetime
    created_at: datetime
    lines: list[ReservationLineRead]

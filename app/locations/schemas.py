"""Request and response bodies of /locations, /products/{sku}/stock and /transfers."""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.products.schemas import Integral, LocationCode, Name, Sku
from app.rules import NOTE_MAX, QUANTITY_MAX


class LocationCreate(BaseModel):
    """POST /locations body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    code: LocationCode
    name: Name


class LocationPatch(BaseModel):
    """PATCH /locations/{code} body: only the name changes (a code is for good)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name


class LocationRead(BaseModel):
    code: str
    name: str
    created_at: datetime
    updated_at: datetime


class StockLevel(BaseModel):
    location: str
    quantity: int
    reserved: int
    available: int


class ProductStockRead(BaseModel):
    """GET /products/{sku}/stock: the totals and every location holding units or holds."""

    sku: str
    quantity: int
    reserved: int
    available: int
    locations: list[StockLevel]


class LocationStockRow(BaseModel):
    """A row of GET /locations/{code}/stock."""

    sku: str
    quantity: int
    reserved: int
    available: int


class TransferCreate(BaseModel):
    """POST /transfers body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sku: Sku
    from_: Annotated[LocationCode, Field(alias="from")]
    to: LocationCode
    quantity: Annotated[int, Field(ge=1, le=QUANTITY_MAX), Integral]
    note: Annotated[str, StringConstraints(max_length=NOTE_MAX)] | None = None


class TransferRead(BaseModel):
    id: int
    sku: str
    from_: Annotated[str, Field(alias="from")]
    to: str
    quantity: int
    note: str | None
    created_at: datetime

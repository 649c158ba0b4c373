"""Request and response bodies: the contract's field rules, checked before the database."""

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
)
from pydantic.json_schema import SkipJsonSchema

from app.models import MAIN_LOCATION
from app.rules import (
    DESCRIPTION_MAX,
    INT4_MAX,
    INT4_MIN,
    NAME_MAX,
    NAME_PATTERN,
    NOT_BLANK,
    NOTE_MAX,
    PRICE_DECIMALS,
    PRICE_MAX,
    QUANTITY_MAX,
    REORDER_POINT_MAX,
    SKU_MAX,
    SKU_PATTERN,
    Reason,
)

CENT = Decimal(1).scaleb(-PRICE_DECIMALS)
# The strings _parse_price and _check_price accept, as a pattern for the OpenAPI document:
# a zero with a sign, or up to 10 digits before the point (after any leading zeros) and up
# to 2 decimals after it (then any trailing zeros). tests/test_openapi.py holds the two
# to the same answers.
PRICE_TEXT_PATTERN = (
    rf"^(-?0+(\.0+)?|0*[0-9]{{1,{len(str(int(PRICE_MAX)))}}}(\.[0-9]{{1,{PRICE_DECIMALS}}}0*)?)$"
)
# A price sent as a string: plain ASCII decimal notation, nothing else.
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")


def _not_blank(value: str) -> str:
    if not NOT_BLANK.search(value):
        raise ValueError("must not be blank")
    return value


def _parse_price(value: Any) -> Decimal:
    # JSON numbers arrive as int or as an exact Decimal (app.core.http.limits parses with
    # parse_float=Decimal): never through a binary float, so 19.9900000000000001 keeps its
    # 16 decimals and is refused rather than stored as 19.99.
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise ValueError("must be a decimal number or a string holding one")
    # Decimal() alone would also take "1_000", "1e2", " 5", "+5" and non-ASCII digits ("١٢").
    if isinstance(value, str) and not _DECIMAL_TEXT.match(value):
        raise ValueError("must be a decimal number such as 19.99")
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise ValueError("must be a decimal number such as 19.99") from None
    if not price.is_finite():
        raise ValueError("must be a finite decimal number")
    return price


def _check_price(price: Decimal) -> Decimal:
    # Range first: quantize() of a number like 1e999999 would itself fail.
    if price < 0 or price > PRICE_MAX:
        raise ValueError(f"must be between 0 and {PRICE_MAX}")
    if price != price.quantize(CENT):
        raise ValueError(f"must have at most {PRICE_DECIMALS} decimal places (it is not rounded)")
    return price.quantize(CENT)


Sku = Annotated[
    str,
    StringConstraints(min_length=1, max_length=SKU_MAX, pattern=SKU_PATTERN),
    Field(examples=["ABC-1"]),
]
# A location's code follows the SKU's rules.
LocationCode = Annotated[
    str,
    StringConstraints(min_length=1, max_length=SKU_MAX, pattern=SKU_PATTERN),
    Field(examples=["MAIN", "WH-EAST"]),
]
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_MAX),
    AfterValidator(_not_blank),
    # Documented only: the validators above decide (with Python's regex, not pydantic's).
    Field(examples=["Blue mug"], json_schema_extra={"pattern": NAME_PATTERN}),
]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)]
Price = Annotated[
    Decimal,
    BeforeValidator(_parse_price),
    AfterValidator(_check_price),
    # The documented shape, range included (pydantic alone would say "number or string").
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "number",
                    "minimum": 0,
                    "maximum": float(PRICE_MAX),
                    "multipleOf": float(CENT),
                },
                {"type": "string", "pattern": PRICE_TEXT_PATTERN},
            ]
        }
    ),
    Field(
        description="0 to 9999999999.99, at most 2 decimals; a JSON number or a string",
        examples=["19.99"],
    ),
]


def _integral(value: Any) -> Any:
    # JSON, and JSON Schema's "integer", do not tell 5 from 5.0 (or 5e0): a number with no
    # fraction is an integer. It arrives as a Decimal (app.core.http.limits); past bigint it stays
    # one, and is refused, without a long conversion.
    if (
        isinstance(value, Decimal)
        and value.is_finite()
        and abs(value) <= 2**63
        and value == value.to_integral_value()
    ):
        return int(value)
    return value


Integral = BeforeValidator(_integral)
Quantity = Annotated[int, Field(ge=0, le=QUANTITY_MAX), Integral]
# Low on stock at or below it (docs/api.md); null: never low.
ReorderPoint = Annotated[int, Field(ge=0, le=REORDER_POINT_MAX), Integral]


class ProductCreate(BaseModel):
    """POST /products body. Unknown fields and wrong types are refused, never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sku: Sku
    name: Name
    description: Description | None = None
    price: Price
    quantity: Quantity = 0
    reorder_point: ReorderPoint | None = None


class ProductRead(BaseModel):
    """A product as the API returns it (built by PostgreSQL's product_json)."""

    id: int
    sku: str
    name: str
    description: str | None
    price: Annotated[str, Field(examples=["19.99"], pattern=r"^\d{1,10}\.\d{2}$")]
    quantity: Annotated[int, Field(description="Units on hand, summed over every location.")]
    reserved: Annotated[int, Field(description="Units held by active reservations.")]
    available: Annotated[int, Field(description="quantity - reserved.")]
    reorder_point: int | None
    created_at: datetime
    updated_at: datetime


# --- Changing products and stock (PATCH, adjustments, movements) -------------------------


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("cannot be null")
    return value


def _documented_as(kind: Any) -> WithJsonSchema:
    return WithJsonSchema(TypeAdapter(kind).json_schema())


def _refuse_fixed(value: Any) -> Any:
    raise ValueError("cannot be changed")


def _refuse_quantity(value: Any) -> Any:
    raise ValueError("cannot be patched: change stock with POST /products/{sku}/adjustments")


# Known to the model so that the refusal names the field and says why; absent from the docs.
_Fixed = Annotated[Any, BeforeValidator(_refuse_fixed), SkipJsonSchema()]
_Stock = Annotated[Any, BeforeValidator(_refuse_quantity), SkipJsonSchema()]


class ProductUpdate(BaseModel):
    """PATCH /products/{sku} body, a JSON merge patch (RFC 7396) of name, description, price
    and reorder_point.

    A field left out stays as it is; `description: null` and `reorder_point: null` clear
    it; `name` and `price` cannot be null. Everything else is refused (422), stock included.
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    PATCHABLE: ClassVar[frozenset[str]] = frozenset(
        {"name", "description", "price", "reorder_point"}
    )

    def changes(self) -> dict[str, Any]:
        """The fields the client sent and may change, with their values (None clears)."""
        return self.model_dump(include=self.model_fields_set & self.PATCHABLE)

    # Defaults are never validated, so None here means "not sent"; a null sent is refused.
    # Documented as the plain type: null is refused, so the docs do not offer it.
    name: Annotated[Name | None, BeforeValidator(_not_null), _documented_as(Name)] = None
    description: Description | None = None
    price: Annotated[Price | None, BeforeValidator(_not_null), _documented_as(Price)] = None
    reorder_point: ReorderPoint | None = None
    sku: _Fixed = None
    id: _Fixed = None
    created_at: _Fixed = None
    updated_at: _Fixed = None
    quantity: _Stock = None


def _non_zero(value: int) -> int:
    if value == 0:
        raise ValueError("must not be 0")
    return value


class AdjustmentCreate(BaseModel):
    """POST /products/{sku}/adjustments body: a relative change of stock."""

    model_config = ConfigDict(extra="forbid", strict=True)

    delta: Annotated[
        int,
        Field(ge=INT4_MIN, le=INT4_MAX, examples=[5, -1], json_schema_extra={"not": {"const": 0}}),
        Integral,
        AfterValidator(_non_zero),
    ]
    reason: Reason
    note: Annotated[str, StringConstraints(max_length=NOTE_MAX)] | None = None
    location: Annotated[LocationCode, Field(description="Where (any case); default MAIN.")] = (
        MAIN_LOCATION
    )


class MovementRead(BaseModel):
    """One row of a product's stock ledger (built by PostgreSQL's movement_json)."""

    id: int
    delta: int
    reason: Reason
    note: str | None
    location: str
    quantity_after: Annotated[int, Field(description="The quantity at the location after it.")]
    created_at: datetime

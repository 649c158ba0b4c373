"""The change log's representations, as the OpenAPI document describes them."""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from app.products.schemas import MovementRead, ProductRead
from app.rules import EventType


class ChangeRead(BaseModel):
    """One event of the change log (built by PostgreSQL's product_change_json)."""

    seq: Annotated[str, Field(description="The cursor: pass the last one seen as `after`")]
    type: EventType
    sku: str
    product: Annotated[
        ProductRead, Field(description="After the change; the last state for a delete")
    ]
    changed: Annotated[
        list[str],
        Field(
            description="Fields whose value changed; [] for created, deleted, and a movement "
            "that changed no field"
        ),
    ]
    movement: Annotated[
        MovementRead | None, Field(description="The stock movement, if the change was one")
    ]
    at: datetime

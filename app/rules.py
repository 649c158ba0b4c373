"""The field rules the API checks before PostgreSQL does, so that a 422 can name the field.

schema.sql is the authority: its CHECK constraints decide for every client. This module is
the one place the API mirrors them, and tests/test_rules.py compares every rule here with
the live catalog (pg_constraint) on boundary values, so the two cannot drift apart.
"""

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, get_args

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
SKU_MAX = 64
# The characters a SKU may hold anywhere (a prefix or a search term may start with any).
SKU_CHARS_PATTERN = r"^[A-Za-z0-9._-]+$"
NAME_MAX = 200
# What "blank" means to products_name_check (`name ~ '[^[:space:]]'`): PostgreSQL's
# [[:space:]], glibc's "space" class in the C.UTF-8 and en_US.UTF-8 locales. Not Python's
# str.isspace(): the no-break spaces (U+00A0, U+2007, U+202F) are not in it.
SPACE_CHARACTERS = "\t\n\v\f\r \u1680\u2000-\u2006\u2008-\u200a\u2028\u2029\u205f\u3000"
NOT_BLANK = re.compile(f"[^{SPACE_CHARACTERS}]")
# Text PostgreSQL can store holds no NUL (app.core.http.limits refuses one in any JSON string).
STORABLE_TEXT_PATTERN = r"^[^\x00]*$"
# A name as the OpenAPI document states it: storable, and not blank.
NAME_PATTERN = rf"^[^\x00]*[^\x00{SPACE_CHARACTERS}][^\x00]*$"
DESCRIPTION_MAX = 2000
PRICE_MAX = Decimal("9999999999.99")
PRICE_DECIMALS = 2
INT4_MAX = 2_147_483_647
INT4_MIN = -2_147_483_648
QUANTITY_MAX = INT4_MAX
REORDER_POINT_MAX = INT4_MAX
NOTE_MAX = 500
Reason = Literal["received", "sold", "returned", "damaged", "correction"]
REASONS: tuple[str, ...] = get_args(Reason)
# The change log's event types, and what a webhook may subscribe to (schema.sql:
# product_changes_type_check, webhooks_events_check).
EventType = Literal["product.created", "product.updated", "product.deleted"]
ALL_EVENTS = "*"
# Webhooks (webhooks_url_check, webhooks_description_check).
WEBHOOK_URL_MAX = 2000
WEBHOOK_SCHEMES = ("http", "https")
WEBHOOK_DESCRIPTION_MAX = 500
# Idempotency-Key (docs/api.md): 1-255 printable ASCII characters. Neither the first nor the last
# is a space: HTTP strips a field value's surrounding whitespace (RFC 9110 5.5), so such a
# key would not arrive as sent.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$"


@dataclass(frozen=True)
class Rule:
    """A named CHECK constraint of schema.sql: the API field it guards and what it says."""

    field: str
    message: str


# Constraint name -> rule. Clients see the constraint's name in a 422 the database raised.
RULES: dict[str, Rule] = {
    "products_sku_format_check": Rule("sku", "must be 1-64 characters of A-Z a-z 0-9 . _ -"),
    "products_name_check": Rule("name", "must be 1-200 characters and not blank"),
    "products_description_length_check": Rule("description", "must be at most 2000 characters"),
    "products_price_check": Rule("price", "must be 0 to 9999999999.99 with at most 2 decimals"),
    "products_quantity_check": Rule("quantity", "must not be negative"),
    "products_reorder_point_check": Rule("reorder_point", "must not be negative"),
    "stock_movements_delta_check": Rule("delta", "must not be 0"),
    "stock_movements_reason_check": Rule("reason", "must be one of " + ", ".join(REASONS)),
    "stock_movements_note_length_check": Rule("note", "must be at most 500 characters"),
    "stock_movements_quantity_after_check": Rule("quantity", "must not be negative"),
}


def rule_for(constraint: str) -> Rule | None:
    """The rule behind a constraint name, or None for a constraint the API does not map."""
    return RULES.get(constraint)

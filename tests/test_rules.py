"""app/rules.py against the live catalog: the API's early checks and the database's CHECKs
say the same about every boundary value, so the two cannot drift apart."""

import unicodedata
from decimal import Decimal
from typing import Any

import pytest
from psycopg import Connection
from pydantic import ValidationError

from app.products.schemas import AdjustmentCreate, ProductCreate
from app.rules import RULES

VALID_PRODUCT: dict[str, Any] = {"sku": "A-1", "name": "n", "price": "1.00"}
VALID_ADJUSTMENT: dict[str, Any] = {"delta": 1, "reason": "sold"}

# Values on and around every boundary, including the ones where Python's and PostgreSQL's
# ideas of "whitespace" or "character" could differ.
SAMPLES: dict[str, list[Any]] = {
    "sku": [
        "A",
        "a-1",
        "A" * 64,
        "A" * 65,
        "-A",
        ".A",
        "_A",
        "A B",
        "A/B",
        "Ä",
        "A\u00e9",
        "1.2_3-4",
        "",
        "A\u0301",
        "\u0661",
    ],
    "name": [
        "x",
        "x" * 200,
        "x" * 201,
        "",
        " ",
        "\t\n",
        "\u00a0",
        "\u2003",
        "\u3000",
        " x ",
        "\u00e9" * 200,
        "\U0001f600" * 200,
        "\U0001f600" * 201,
        "\u200b",
    ],
    "description": ["", "d" * 2000, "d" * 2001, "\U0001f600" * 2000, "\U0001f600" * 2001],
    "price": [
        "0",
        "0.00",
        "0.01",
        "9999999999.99",
        "10000000000",
        "9999999999.991",
        "-0.01",
        "1.005",
        "1.10",
        "-0",
    ],
    "quantity": [0, 1, -1, 2_147_483_647],
    "reorder_point": [0, 1, -1, 2_147_483_647],
    "delta": [1, -1, 0, 2_147_483_647, -2_147_483_648],
    "reason": ["received", "sold", "returned", "damaged", "correction", "stolen", "Sold", ""],
    "note": ["", "n" * 500, "n" * 501, "\U0001f600" * 500, "\U0001f600" * 501],
}


def _catalog_checks(db: Connection[Any]) -> dict[str, tuple[str, str, str]]:
    """Every CHECK of the API's tables: name -> (table, column, expression)."""
    rows = db.execute(
        """
        SELECT c.conname, t.relname, a.attname, pg_get_expr(c.conbin, c.conrelid)
        FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
        WHERE c.contype = 'c' AND t.relname IN ('products', 'stock_movements')
        """
    ).fetchall()
    return {name: (table, column, expression) for name, table, column, expression in rows}


def _database_accepts(
    db: Connection[Any], table: str, column: str, expression: str, value: Any
) -> bool:
    # The constraint's own expression, on the value cast to the column's own type. A value
    # the type itself refuses is refused by the database too.
    kind = db.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = %s",
        (table, column),
    ).fetchone()
    assert kind is not None
    try:
        with db.transaction():
            row = db.execute(
                f'SELECT ({expression}) IS NOT FALSE FROM (SELECT %s::{kind[0]} AS "{column}") t',  # type: ignore[arg-type]
                (str(value),),
            ).fetchone()
    except Exception:
        return False
    assert row is not None
    return bool(row[0])


def _api_accepts(column: str, value: Any) -> bool:
    model, base = (
        (AdjustmentCreate, VALID_ADJUSTMENT)
        if column in AdjustmentCreate.model_fields
        else (ProductCreate, VALID_PRODUCT)
    )
    try:
        model.model_validate({**base, column: value})
    except ValidationError:
        return False
    return True


# Rules on totals only the ledger writes: a violation is 409 insufficient_stock, not a field.
STOCK_CHECKS = {"products_reserved_check"}


def test_every_check_constraint_has_exactly_one_rule(db: Connection[Any]) -> None:
    checks = {n: c for n, c in _catalog_checks(db).items() if n not in STOCK_CHECKS}
    assert set(checks) == set(RULES)
    for name, (_, column, _) in checks.items():
        # quantity_after is the ledger's copy of quantity: the API names quantity.
        assert RULES[name].field == column.replace("quantity_after", "quantity"), name


@pytest.mark.parametrize("constraint", sorted(RULES))
def test_the_api_and_the_database_agree_on_every_sample(
    db: Connection[Any], constraint: str
) -> None:
    table, column, expression = _catalog_checks(db)[constraint]
    if column not in SAMPLES:
        pytest.skip(f"{column} is not sent by clients")
    disagreements = [
        (value, api, database)
        for value in SAMPLES[column]
        if (api := _api_accepts(column, value))
        != (database := _database_accepts(db, table, column, expression, value))
    ]
    assert disagreements == [], disagreements


def test_blank_means_what_it_means_to_postgresql_for_every_space_like_character(
    db: Connection[Any],
) -> None:
    candidates = [
        chr(c)
        for c in range(1, 0x110000)
        if not 0xD800 <= c <= 0xDFFF
        and (chr(c).isspace() or unicodedata.category(chr(c)) in {"Zs", "Zl", "Zp", "Cc", "Cf"})
    ]
    rows = db.execute(
        "SELECT c, c ~ '[^[:space:]]' FROM unnest(%s::text[]) c", (candidates,)
    ).fetchall()
    database = {c: accepted for c, accepted in rows}
    api = {c: _api_accepts("name", c) for c in candidates}
    assert {c for c in candidates if api[c] != database[c]} == set()


def test_the_price_rule_is_exact_at_its_limits() -> None:
    assert ProductCreate.model_validate({**VALID_PRODUCT, "price": "9999999999.99"}).price == (
        Decimal("9999999999.99")
    )

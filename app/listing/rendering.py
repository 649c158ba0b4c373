"""A page of products as JSON, NDJSON or CSV, spreadsheet-safe on request."""

import json
from collections.abc import Sequence

from app.core.http.formats import Format, csv_field, json_array
from app.products.schemas import ProductRead

# The API's field order (the product field table): the CSV header of a page. An export's
# header comes from PostgreSQL (product_fields); tests/test_export.py checks they agree.
CSV_FIELDS = tuple(ProductRead.model_fields)
CSV_HEADER = ",".join(CSV_FIELDS)


# What a spreadsheet takes as the start of a formula in a cell (OWASP, "CSV Injection"):
# = + - @, and tab and carriage return, which some strip before looking.
FORMULA_STARTS = "=+-@\t\r"
# The product fields that can begin with one: free text (a SKU begins with a letter or a
# digit; numbers here are never negative; timestamps begin with the year).
FREE_TEXT_FIELDS = ("name", "description")


def spreadsheet_safe(text: str) -> str:
    """`text` with a `'` in front when a spreadsheet would run it as a formula: the cell
    then shows the text as it is. Used only when a client asks (`spreadsheet_safe=true`):
    CSV cells are otherwise the data exactly as stored."""
    return "'" + text if text[:1] and text[0] in FORMULA_STARTS else text


def render_page(fmt: Format, rows: Sequence[str], *, for_spreadsheet: bool = False) -> bytes:
    """A whole page body from product_json texts (at most 1000: paged listings are small).
    `for_spreadsheet`: CSV free text made spreadsheet_safe."""
    if fmt is Format.JSON:
        return json_array(rows).encode()
    if fmt is Format.NDJSON:
        return "".join(row + "\n" for row in rows).encode()
    lines = [CSV_HEADER]
    for row in rows:
        product = json.loads(row)
        if for_spreadsheet:
            for field in FREE_TEXT_FIELDS:
                if product[field] is not None:
                    product[field] = spreadsheet_safe(product[field])
        lines.append(",".join(csv_field(product[f]) for f in CSV_FIELDS))
    return ("\r\n".join(lines) + "\r\n").encode()

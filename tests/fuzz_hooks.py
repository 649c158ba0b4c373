"""What schemathesis is told beyond the OpenAPI document (SCHEMATHESIS_HOOKS=tests.fuzz_hooks).

Only facts no schema can state, each a property of the server's state or of the world, not
of a request's shape: what a valid CSV or NDJSON file is, that a cursor is valid only as
the server issued it, that an Idempotency-Key names one request, and that a webhook's host
must resolve. They touch valid (positive) requests only; everything else the fuzzer derives
from the document alone.
"""

import itertools
import json
from typing import Any
from urllib.parse import urlsplit

import schemathesis
from hypothesis import strategies as st

from app.rules import PRICE_DECIMALS

# A port nothing listens on: deliveries to it are refused at once, never held for 10 s.
CLOSED = "http://127.0.0.1:9"

_SKU = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,15}\Z")
_NAME = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9 .,'-]{0,30}\Z")
_PRICE = st.integers(0, 10**7).map(lambda cents: f"{cents / 10**PRICE_DECIMALS:.2f}")


@st.composite
def _rows(draw: Any) -> list[dict[str, Any]]:
    # One SKU per file, in any letter case: a repeated SKU is a 422 by definition.
    skus = draw(st.lists(_SKU, min_size=1, max_size=5, unique_by=str.lower))
    return [
        {
            "sku": sku,
            "name": draw(_NAME),
            "price": draw(_PRICE),
            "quantity": draw(st.integers(0, 1000)),
        }
        for sku in skus
    ]


def _csv(rows: list[dict[str, Any]]) -> bytes:
    lines = ["sku,name,price,quantity"]
    lines += [f'{r["sku"]},"{r["name"]}",{r["price"]},{r["quantity"]}' for r in rows]
    return ("\n".join(lines) + "\n").encode()


def _ndjson(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


schemathesis.openapi.media_type("text/csv", _rows().map(_csv))
schemathesis.openapi.media_type("application/x-ndjson", _rows().map(_ndjson))
# Opaque cursors: only one the server issued, for the same filters, is valid (422
# otherwise, docs/api.md), which no pattern can say. Valid requests are sent without one; the
# negative phase still sends made-up ones, and tests/test_pagination.py follows real ones.
_CURSORED = {
    "listProducts",
    "listMovements",
    "listDeliveries",
    "listLocations",
    "listLocationStock",
    "listReservations",
}


_KEYED = {
    "createProduct",
    "adjustStock",
    "importProducts",
    "createWebhook",
    "createLocation",
    "createTransfer",
    "createReservation",
    "fulfilReservation",
    "releaseReservation",
    "extendReservation",
}
_serial = itertools.count()


# before_call, not map_case: it sees the examples phase's cases too.
@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    operation = case.operation.definition.raw.get("operationId")
    if operation in _CURSORED and case.query:
        case.query.pop("after", None)
    # The same key with another request is 422 `idempotency_key_reused` (docs/api.md): each
    # valid request gets a key of its own, the generated one with a serial number at its end.
    key = (case.headers or {}).get("Idempotency-Key")
    if operation in _KEYED and key:
        suffix = f"~{next(_serial)}"
        case.headers["Idempotency-Key"] = key[: 255 - len(suffix)] + suffix
    # A transfer is between two locations (422 otherwise, docs/api.md): codes that differ
    # only in case name one.
    if operation == "createTransfer" and isinstance(case.body, dict):
        source, target = case.body.get("from"), case.body.get("to")
        if isinstance(source, str) and isinstance(target, str) and source.lower() == target.lower():
            case.body["to"] = (target[:62] + "-2") if target[-1:] != "-" else target[:62] + "x2"
    # The host must resolve, and this machine has no DNS to speak of: the URL keeps its
    # path and goes to a closed port (the fuzzed server allows private addresses).
    if operation == "createWebhook" and isinstance(case.body, dict):
        url = case.body.get("url")
        if isinstance(url, str):
            path = urlsplit(url).path.lstrip("/")
            case.body["url"] = f"{CLOSED}/{path}"

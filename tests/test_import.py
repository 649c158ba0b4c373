"""POST /products/import: CSV and NDJSON through COPY, all or nothing, errors by line."""

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from httpx import AsyncClient, Response
from psycopg import Connection

from tests.conftest import ClientFactory
from tests.helpers import assert_problem, product
from tests.test_export import TRICKY, parse_csv

HEADER = "sku,name,description,price,quantity\n"


async def post_csv(client: AsyncClient, text: str | bytes, **headers: str) -> Response:
    return await client.post(
        "/products/import", content=text, headers={"content-type": "text/csv", **headers}
    )


async def post_ndjson(client: AsyncClient, text: str | bytes) -> Response:
    return await client.post(
        "/products/import", content=text, headers={"content-type": "application/x-ndjson"}
    )


def count(db: Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM products").fetchone()
    assert row is not None
    return int(row[0])


def csv_rows(n: int, start: int = 1) -> str:
    return "".join(f"IMP-{i},Item {i},,{i % 100}.50,{i % 7}\n" for i in range(start, start + n))


async def test_csv_import_creates_every_row_in_file_order(
    client: AsyncClient, db: Connection[Any]
) -> None:
    response = await post_csv(client, HEADER + csv_rows(300))

    assert response.status_code == 201, response.text
    assert response.json() == {"created": 300, "updated": 0, "unchanged": 0}
    listed = (await client.get("/products")).json()
    assert [p["sku"] for p in listed] == [f"IMP-{i}" for i in range(1, 301)]
    assert listed[1] == {**listed[1], "name": "Item 2", "description": None, "price": "2.50"}
    assert listed[1]["quantity"] == 2


@contextmanager
def tables_created(db: Connection[Any]) -> Iterator[list[str]]:
    """The tables (temporary ones too) that statements create while the block runs."""
    db.execute(
        """
        CREATE TABLE test_created (name text);
        CREATE FUNCTION test_created() RETURNS event_trigger LANGUAGE plpgsql
            SECURITY DEFINER SET search_path = public AS $$
        BEGIN
            INSERT INTO test_created SELECT object_identity FROM pg_event_trigger_ddl_commands()
            WHERE command_tag IN ('CREATE TABLE', 'CREATE TABLE AS');
        END $$;
        CREATE EVENT TRIGGER test_created ON ddl_command_end EXECUTE FUNCTION test_created();
        """
    )
    created: list[str] = []
    try:
        yield created
        created += [name for (name,) in db.execute("SELECT name FROM test_created")]
    finally:
        db.execute(
            "DROP EVENT TRIGGER test_created; DROP FUNCTION test_created(); DROP TABLE test_created"
        )


async def test_a_valid_csv_import_is_copied_straight_into_the_table(
    client: AsyncClient, db: Connection[Any]
) -> None:
    with tables_created(db) as created:
        response = await post_csv(client, HEADER + csv_rows(300))
    assert response.json() == {"created": 300, "updated": 0, "unchanged": 0}
    assert created == []  # no staging table: read once, written once


async def test_an_empty_field_with_a_default_gets_the_default(
    client: AsyncClient, db: Connection[Any]
) -> None:
    # COPY into the table would store NULL there and fail: the staged path stores the
    # default, as an INSERT leaving the column out would.
    response = await post_csv(client, "sku,name,price,quantity\nD-1,x,1.00,\nD-2,y,2.00,3\n")

    assert response.json() == {"created": 2, "updated": 0, "unchanged": 0}
    assert db.execute("SELECT sku, quantity FROM products ORDER BY id").fetchall() == [
        ("D-1", 0),
        ("D-2", 3),
    ]


async def test_csv_columns_in_any_order_and_optional_ones_left_out(client: AsyncClient) -> None:
    response = await post_csv(client, '\ufeff"price",sku,name\r\n1,A-1,x\r\n2.5,A-2,"y, z"\r\n')
    assert response.status_code == 201, response.text
    listed = (await client.get("/products")).json()
    assert [(p["sku"], p["name"], p["price"], p["quantity"]) for p in listed] == [
        ("A-1", "x", "1.00", 0),
        ("A-2", "y, z", "2.50", 0),
    ]


async def test_ndjson_import_creates_rows_and_skips_blank_lines(client: AsyncClient) -> None:
    lines = [json.dumps(product(f"N-{i}", price=i + 0.25, quantity=i)) for i in range(3)]
    response = await post_ndjson(client, lines[0] + "\n\n" + lines[1] + "\r\n" + lines[2])
    assert response.status_code == 201, response.text
    assert response.json() == {"created": 3, "updated": 0, "unchanged": 0}
    listed = (await client.get("/products")).json()
    assert [(p["sku"], p["price"], p["quantity"]) for p in listed] == [
        ("N-0", "0.25", 0),
        ("N-1", "1.25", 1),
        ("N-2", "2.25", 2),
    ]


async def test_header_only_creates_nothing(client: AsyncClient) -> None:
    response = await post_csv(client, HEADER)
    assert response.status_code == 201
    assert response.json() == {"created": 0, "updated": 0, "unchanged": 0}


async def test_bad_row_at_line_4999_of_5000_writes_nothing(
    client: AsyncClient, db: Connection[Any]
) -> None:
    rows = csv_rows(4999).splitlines(keepends=True)
    rows[4997] = "IMP-4998,Item,,12.345,1\n"  # line 4999: three decimals
    response = await post_csv(client, HEADER + "".join(rows))

    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"] == [
        {
            "line": 4999,
            "field": "price",
            "message": "must be 0 to 9999999999.99 with at most 2 decimals (products_price_check)",
        }
    ]
    assert body["invalid_records"] == 1
    assert count(db) == 0


async def test_every_rule_of_the_api_applies_and_names_the_line(
    client: AsyncClient, db: Connection[Any]
) -> None:
    text = HEADER + (
        "OK-1,fine,,1,\n"  # 2
        "bad sku,x,,1,1\n"  # 3
        ",x,,1,1\n"  # 4: sku missing
        "OK-2,   ,,1,1\n"  # 5: blank name
        f"OK-3,x,{'d' * 2001},1,1\n"  # 6
        "OK-4,x,,-1,1\n"  # 7
        "OK-5,x,,abc,1\n"  # 8
        "OK-6,x,,1,-1\n"  # 9
        "OK-7,x,,1,1.5\n"  # 10
        "OK-8,x,,1,99999999999\n"  # 11
        "OK-9,x,,,1\n"  # 12: price missing
        "OK-10,x,,NaN,1\n"  # 13
    )
    body = assert_problem(await post_csv(client, text), 422, "validation_failed")
    found = [(e["line"], e["field"]) for e in body["errors"]]
    assert found == [
        (3, "sku"),
        (4, "sku"),
        (5, "name"),
        (6, "description"),
        (7, "price"),
        (8, "price"),
        (9, "quantity"),
        (10, "quantity"),
        (11, "quantity"),
        (12, "price"),
        (13, "price"),
    ]
    assert body["invalid_records"] == 11
    assert count(db) == 0


async def test_more_than_100_bad_rows_lists_exactly_100(
    client: AsyncClient, db: Connection[Any]
) -> None:
    text = HEADER + "".join(f"B-{i},,,1,1\n" for i in range(150))
    body = assert_problem(await post_csv(client, text), 422, "validation_failed")
    assert [e["line"] for e in body["errors"]] == list(range(2, 102))
    assert body["invalid_records"] == 150
    assert count(db) == 0


async def test_a_sku_twice_in_the_file_is_422_naming_both_lines(
    client: AsyncClient, db: Connection[Any]
) -> None:
    text = HEADER + "D-1,a,,1,1\nd-2,b,,1,1\nD-3,c,,1,1\nD-2,d,,1,1\nd-1,e,,1,1\n"

    body = assert_problem(await post_csv(client, text), 422, "validation_failed")

    assert body["errors"] == [
        {
            "line": 5,
            "field": "sku",
            "message": "repeats the SKU of line 3 (SKUs are unique ignoring case)",
        },
        {
            "line": 6,
            "field": "sku",
            "message": "repeats the SKU of line 2 (SKUs are unique ignoring case)",
        },
    ]
    assert count(db) == 0


async def test_existing_skus_are_409_listing_their_lines(
    client: AsyncClient, db: Connection[Any]
) -> None:
    assert (await client.post("/products", json=product("Old-1"))).status_code == 201
    text = HEADER + "D-1,a,,1,1\nOLD-1,c,,1,1\nD-2,d,,1,1\n"

    body = assert_problem(await post_csv(client, text), 409, "duplicate_sku")

    assert body["errors"] == [
        {"line": 3, "field": "sku", "message": "a product with SKU 'Old-1' already exists"},
    ]
    assert count(db) == 1


async def test_validation_problems_come_before_existing_skus(client: AsyncClient) -> None:
    assert (await client.post("/products", json=product("D-1"))).status_code == 201
    text = HEADER + "D-1,a,,1,1\nD-2,b,,1,1\nD-2,b,,1,1\nD-3,,,1,1\n"
    body = assert_problem(await post_csv(client, text), 422, "validation_failed")
    assert [(e["line"], e["field"]) for e in body["errors"]] == [(4, "sku"), (5, "name")]


async def test_multiline_records_count_physical_lines(client: AsyncClient) -> None:
    text = HEADER + 'M-1,"two\nlines",,1,1\nM-2,"three\r\nlines\nhere",,1,1\nM-3,x,,oops,1\n'
    body = assert_problem(await post_csv(client, text), 422, "validation_failed")
    assert body["errors"][0]["line"] == 7


@pytest.mark.parametrize(
    ("header", "fields"),
    [
        ("sku,name,price,colour", ["colour"]),
        ("sku,name,price,identifier", ["identifier"]),
        ("sku,name", ["price"]),
        ("sku,name,price,name", ["name"]),
        ("", ["name", "price", "sku"]),
    ],
)
async def test_unknown_missing_or_repeated_columns_are_422(
    client: AsyncClient, header: str, fields: list[str]
) -> None:
    body = assert_problem(
        await post_csv(client, header + "\nX-1,n,1,2\n"), 422, "validation_failed"
    )
    assert sorted(e["field"] for e in body["errors"]) == fields
    assert {e["line"] for e in body["errors"]} == {1}


async def test_records_with_the_wrong_number_of_fields_are_422_with_line(
    client: AsyncClient,
) -> None:
    body = assert_problem(
        await post_csv(client, HEADER + "A-1,a,,1,1\nA-2,a,,1,1,extra\n"), 422, "validation_failed"
    )
    assert body["errors"][0]["line"] == 3


def in_chunks(text: str, size: int) -> AsyncIterator[bytes]:
    """The body in pieces of `size` bytes, as a slow client sends it (no Content-Length)."""
    data = text.encode()

    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(data), size):
            yield data[at : at + size]

    return chunks()


UNCLOSED = "has an unclosed quote: the record runs to the end of the body"


@pytest.mark.parametrize("on_conflict", ["error", "update"])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
@pytest.mark.parametrize(
    ("records", "line"),
    [
        # The case: line 3 of 4 opens a quote it never closes.
        ('A-1,a,,1,1\nA-2,"b,,1,1\nA-3,c,,1,1\n', 3),
        # A quote in the middle of a field opens one too (as COPY reads CSV), and a quoted
        # field spanning lines before it moves the line on; doubled quotes close nothing.
        ('M-1,"two\n""lines""",,1,1\nA-2,b",,1,1\nA-3,c,,1,1', 4),
        ('A-1,"a",,1,1\nA-2,b,,1,1\nA-3,c,,1,1\nA-4,"d\n\n\n', 5),
    ],
)
async def test_an_unclosed_quote_is_named_at_the_line_its_record_begins(
    client: AsyncClient, db: Connection[Any], records: str, line: int, chunk: int, on_conflict: str
) -> None:
    response = await client.post(
        f"/products/import?on_conflict={on_conflict}",
        content=in_chunks(HEADER + records, chunk),
        headers={"content-type": "text/csv"},
    )
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"] == [{"field": "line", "message": UNCLOSED, "line": line}]
    assert body["detail"] == f"The body cannot be read as CSV at line {line}."
    assert count(db) == 0


async def test_a_record_refused_before_an_unclosed_quote_keeps_its_own_reason(
    client: AsyncClient,
) -> None:
    response = await post_csv(client, HEADER + 'A-1,a,,1,1,extra\nA-2,"b,,1,1\n')
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"] == [
        {"field": "line", "message": "does not have the header's columns", "line": 2}
    ]


async def test_invalid_utf8_is_422(client: AsyncClient) -> None:
    response = await post_csv(client, HEADER.encode() + b"A-1,caf\xe9,,1,1\n")
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["line"] == 2


async def test_end_of_data_marker_cannot_truncate_an_import(
    client: AsyncClient, db: Connection[Any]
) -> None:
    body = assert_problem(
        await post_csv(client, HEADER + "A-1,a,,1,1\n\\.\nA-2,a,,1,1\n"), 422, "validation_failed"
    )
    assert body["errors"][0]["line"] == 3
    assert count(db) == 0


async def test_ndjson_errors_name_lines(client: AsyncClient, db: Connection[Any]) -> None:
    good = json.dumps(product("G-1"))
    lines = [
        good,  # 1
        "",  # 2
        json.dumps({**product("G-2"), "colour": "red"}),  # 3
        json.dumps(product("G-3", quantity="5")),  # 4
        json.dumps(product(123)),  # 5
        json.dumps([1, 2]),  # 6
        json.dumps(product("G-4", quantity=None)),  # 7
        json.dumps(product("G-5", price="1.001")),  # 8
    ]
    body = assert_problem(await post_ndjson(client, "\n".join(lines)), 422, "validation_failed")
    assert [(e["line"], e["field"]) for e in body["errors"]] == [
        (3, "colour"),
        (4, "quantity"),
        (5, "sku"),
        (6, "line"),
        (7, "quantity"),
    ]  # line 8 is checked once the shape is right everywhere
    assert count(db) == 0

    body = assert_problem(
        await post_ndjson(client, good + "\n{oops\n" + good[:-1] + "\n"), 422, "validation_failed"
    )
    assert [(e["line"], e["message"]) for e in body["errors"]] == [
        (2, "is not valid JSON"),
        (3, "is not valid JSON"),
    ]


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "text/csv; charset=latin-1", ""]
)
async def test_other_media_types_are_415(client: AsyncClient, content_type: str) -> None:
    response = await client.post(
        "/products/import", content=HEADER, headers={"content-type": content_type}
    )
    assert_problem(response, 415, "unsupported_media_type")


async def test_body_past_the_limit_is_413_whether_declared_or_streamed(
    make_client: ClientFactory, db: Connection[Any]
) -> None:
    async with make_client(import_max_bytes=10_000) as client:
        await _past_the_limit(client, db)


async def _past_the_limit(small_limit_client: AsyncClient, db: Connection[Any]) -> None:
    text = (HEADER + csv_rows(1000)).encode()
    declared = await post_csv(small_limit_client, text)
    assert_problem(declared, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for at in range(0, len(text), 1000):
            yield text[at : at + 1000]

    streamed = await small_limit_client.post(
        "/products/import", content=chunks(), headers={"content-type": "text/csv"}
    )
    assert_problem(streamed, 413, "payload_too_large")
    assert count(db) == 0
    within = await post_csv(small_limit_client, HEADER + csv_rows(50))
    assert within.status_code == 201


async def test_special_characters_survive_export_then_import(
    client: AsyncClient, db: Connection[Any]
) -> None:
    for i, (sku, name, description) in enumerate(TRICKY):
        point = {"reorder_point": i} if i % 2 else {}
        response = await client.post(
            "/products", json=product(sku, name=name, description=description, **point)
        )
        assert response.status_code == 201
    before = (await client.get("/products")).json()
    exported_csv = (await client.get("/products", headers={"accept": "text/csv"})).text
    exported_ndjson = (
        await client.get("/products", headers={"accept": "application/x-ndjson"})
    ).text
    client_fields = ["sku", "name", "description", "price", "quantity", "reorder_point"]

    def same_products(after: list[dict[str, Any]]) -> None:
        assert [{f: p[f] for f in client_fields} for p in after] == [
            {f: p[f] for f in client_fields} for p in before
        ]

    # CSV: keep the client's columns, exactly as exported (quoting untouched).
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    for record in csv.reader(io.StringIO(exported_csv, newline="")):
        writer.writerow(record[1:6] + record[8:9])  # reserved and available are read-only
    assert len(parse_csv(exported_csv)) == len(TRICKY)
    db.execute("DELETE FROM products")
    response = await post_csv(client, out.getvalue())
    assert response.status_code == 201, response.text
    # Python's csv.writer writes "" like null (PostgreSQL's COPY quotes it): compare so.
    after = (await client.get("/products")).json()
    assert [{f: p[f] for f in client_fields} for p in after] == [
        {**{f: p[f] for f in client_fields}, "description": p["description"] or None}
        for p in before
    ]

    # NDJSON carries everything, null included.
    db.execute("DELETE FROM products")
    lines = [
        json.dumps({f: p[f] for f in client_fields})
        for p in map(json.loads, exported_ndjson.splitlines())
    ]
    response = await post_ndjson(client, "\n".join(lines) + "\n")
    assert response.status_code == 201, response.text
    same_products((await client.get("/products")).json())


async def test_import_with_an_idempotency_key_runs_once_and_replays(
    client: AsyncClient, db: Connection[Any]
) -> None:
    key = {"Idempotency-Key": "import-2026-11-25"}
    body = HEADER + csv_rows(40)

    first = await post_csv(client, body, **key)
    again = await post_csv(client, body, **key)

    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"created": 40, "updated": 0, "unchanged": 0}
    assert again.headers["idempotent-replayed"] == "true"
    assert count(db) == 40
    other = await post_csv(client, HEADER + csv_rows(3, start=100), **key)
    assert_problem(other, 422, "idempotency_key_reused")
    assert count(db) == 40


async def test_a_failed_import_under_a_key_is_replayed_and_writes_nothing(
    client: AsyncClient, db: Connection[Any]
) -> None:
    key = {"Idempotency-Key": "import-bad-1"}
    body = HEADER + "A-1,a,,1,1\nA-2,,,1,1\n"

    first = await post_csv(client, body, **key)
    again = await post_csv(client, body, **key)

    assert assert_problem(first, 422, "validation_failed")["errors"][0]["line"] == 3
    assert assert_problem(again, 422, "validation_failed") == first.json()
    assert count(db) == 0


async def test_the_diagnosis_applies_the_databases_own_checks_from_the_catalog(
    client: AsyncClient, db: Connection[Any]
) -> None:
    # A rule the API has never heard of, added by a DBA with psql: the import's diagnosis
    # reads the CHECKs from pg_constraint, so it names this one too, by line.
    db.execute(
        "ALTER TABLE products ADD CONSTRAINT products_name_no_tabs_check "
        "CHECK (position(E'\\t' IN name) = 0)"
    )
    text = HEADER + "T-1,fine,,1,1\n" + "T-2,tab\there,,1,1\n"

    body = assert_problem(await post_csv(client, text), 422, "validation_failed")

    assert body["errors"] == [
        {"line": 3, "field": "line", "message": "violates products_name_no_tabs_check"}
    ]
    assert count(db) == 0

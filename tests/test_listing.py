"""GET /products filters: q (search), quantity_max, low_stock; combined, paged, in every format."""

import csv
import io
import json
import random
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from httpx import AsyncClient, Response
from psycopg import Connection

from app.listing.queries import SCAN_BUDGET
from tests.helpers import assert_problem
from tests.test_pagination import next_url, walk

FORMATS = {
    "application/json": lambda text: [p["sku"] for p in json.loads(text)],
    "application/x-ndjson": lambda text: [json.loads(line)["sku"] for line in text.splitlines()],
    "text/csv": lambda text: [r[1] for r in list(csv.reader(io.StringIO(text, newline="")))[1:]],
}


def add(db: Connection[Any], *products: tuple[str, str, int, int | None]) -> None:
    """(sku, name, quantity, reorder_point) rows, in list order."""
    with db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO products (sku, name, price, quantity, reorder_point, created_at) "
            "VALUES (%s, %s, 1, %s, %s, '2026-01-01Z'::timestamptz + %s * interval '1 s')",
            [(*p, i) for i, p in enumerate(products)],
        )


async def skus(client: AsyncClient, **params: Any) -> list[str]:
    response = await client.get("/products", params=params)
    assert response.status_code == 200, response.text
    return [p["sku"] for p in response.json()]


# --- q -------------------------------------------------------------------------------------


async def test_q_is_a_case_insensitive_substring_of_the_name(
    client: AsyncClient, db: Connection[Any]
) -> None:
    add(
        db,
        ("A-1", "Blue mug", 1, None),
        ("A-2", "Red MUG large", 1, None),
        ("A-3", "Plate", 1, None),
    )

    assert await skus(client, q="mug") == ["A-1", "A-2"]
    assert await skus(client, q="MUG") == ["A-1", "A-2"]
    assert await skus(client, q="bLuE mUg") == ["A-1"]
    assert await skus(client, q="ug") == ["A-1", "A-2"]  # a substring, not a word
    assert await skus(client, q="u") == ["A-1", "A-2"]
    assert await skus(client, q="mugs") == []


async def test_q_finds_by_sku_or_by_name(client: AsyncClient, db: Connection[Any]) -> None:
    add(db, ("MUG-7", "Cup", 1, None), ("X-1", "Big mug", 1, None), ("X-2", "Bowl", 1, None))

    assert await skus(client, q="mug") == ["MUG-7", "X-1"]
    assert await skus(client, q="g-7") == ["MUG-7"]
    assert await skus(client, q="x-") == ["X-1", "X-2"]
    assert await skus(client, q="cup") == ["MUG-7"]


async def test_q_ignores_case_beyond_ascii(client: AsyncClient, db: Connection[Any]) -> None:
    add(
        db,
        ("U-1", "Žluťoučký kůň", 1, None),
        ("U-2", "ÆBLE ØL", 1, None),
        ("U-3", "plain", 1, None),
    )

    assert await skus(client, q="ŽLUŤOUČ") == ["U-1"]
    assert await skus(client, q="ůň") == ["U-1"]
    assert await skus(client, q="æble øl") == ["U-2"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("%", ["W-1"]),
        ("0%", ["W-1"]),
        ("100% cotton", ["W-1"]),  # a trigram term with a wildcard in it
        ("_", ["W-3", "w_5", "W-7"]),  # names and SKUs with an underscore
        ("a_b", ["W-3"]),
        ("xx_yyy", ["W-7"]),  # a trigram term: `_` must not match the `z` of W-8
        ("\\", ["W-4"]),
        ("k\\s", ["W-4"]),
        ("%%", []),
        ("\\%", []),
    ],
)
async def test_q_wildcards_match_themselves(
    client: AsyncClient, db: Connection[Any], q: str, expected: list[str]
) -> None:
    add(
        db,
        ("W-1", "100% cotton", 1, None),
        ("W-2", "100 percent wool", 1, None),
        ("W-3", "a_b", 1, None),
        ("W-4", "back\\slash", 1, None),
        ("w_5", "plain", 1, None),
        ("W-6", "axb", 1, None),
        ("W-7", "xx_yyy", 1, None),
        ("W-8", "xxzyyy", 1, None),
    )

    assert await skus(client, q=q) == expected


@pytest.mark.parametrize("q", ["", "x" * 101, "a\x00b"])
async def test_bad_q_is_422(client: AsyncClient, q: str) -> None:
    body = assert_problem(await client.get("/products", params={"q": q}), 422, "validation_failed")
    assert body["errors"][0]["field"] == "q"


async def test_q_of_100_characters_is_accepted(client: AsyncClient, db: Connection[Any]) -> None:
    add(db, ("L-1", "y" * 150, 1, None))

    assert await skus(client, q="y" * 100) == ["L-1"]


# --- quantity_max and low_stock --------------------------------------------------------------


async def test_quantity_max_keeps_products_at_or_below_it(
    client: AsyncClient, db: Connection[Any]
) -> None:
    add(db, ("Q-0", "n", 0, None), ("Q-5", "n", 5, None), ("Q-9", "n", 9, None))

    assert await skus(client, quantity_max=5) == ["Q-0", "Q-5"]
    assert await skus(client, quantity_max=0) == ["Q-0"]
    assert await skus(client, quantity_max=4) == ["Q-0"]
    assert await skus(client, quantity_max=10**20) == ["Q-0", "Q-5", "Q-9"]


@pytest.mark.parametrize("value", ["-1", "x", "1.5", ""])
async def test_bad_quantity_max_is_422(client: AsyncClient, value: str) -> None:
    response = await client.get("/products", params={"quantity_max": value})
    assert assert_problem(response, 422, "validation_failed")["errors"][0]["field"] == (
        "quantity_max"
    )


async def test_low_stock_means_at_or_below_a_reorder_point_and_null_is_never_low(
    client: AsyncClient, db: Connection[Any]
) -> None:
    add(
        db,
        ("N-0", "n", 0, None),  # out of stock, but no reorder point: never low
        ("Z-0", "n", 0, 0),  # zero point: low only when out of stock
        ("Z-1", "n", 1, 0),
        ("E-5", "n", 5, 5),  # at the point
        ("A-6", "n", 6, 5),
        ("M-1", "n", 2_147_483_647, 2_147_483_647),
    )

    assert await skus(client, low_stock="true") == ["Z-0", "E-5", "M-1"]


@pytest.mark.parametrize("value", ["false", "True", "1", "yes", ""])
async def test_low_stock_takes_only_true(client: AsyncClient, value: str) -> None:
    response = await client.get("/products", params={"low_stock": value})
    assert assert_problem(response, 422, "validation_failed")["errors"][0]["field"] == "low_stock"


async def test_low_stock_follows_stock_changes(client: AsyncClient, db: Connection[Any]) -> None:
    add(db, ("R-1", "n", 10, 3))
    assert await skus(client, low_stock="true") == []

    sold = await client.post("/products/R-1/adjustments", json={"delta": -7, "reason": "sold"})
    assert sold.status_code == 200
    assert await skus(client, low_stock="true") == ["R-1"]
    patched = await client.patch("/products/R-1", json={"reorder_point": None})
    assert patched.status_code == 200
    assert await skus(client, low_stock="true") == []


# --- combined, paged, every format ---------------------------------------------------------

_WORDS = ["mug", "Mug", "cup", "CUP", "bowl", "plate", "a_b", "50%", "x"]


def _catalogue(db: Connection[Any]) -> list[dict[str, Any]]:
    rng = random.Random(3)
    rows = []
    for i in range(240):
        sku = f"{rng.choice(['MUG', 'CUP', 'BOX'])}-{i}"
        name = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        quantity = rng.choice([0, 1, 2, 5, 10, 50])
        point = rng.choice([None, None, 0, 2, 10])
        rows.append({"sku": sku, "name": name, "quantity": quantity, "reorder_point": point})
    add(db, *((r["sku"], r["name"], r["quantity"], r["reorder_point"]) for r in rows))
    return rows


def _matches(row: dict[str, Any], params: dict[str, Any]) -> bool:
    q = params.get("q")
    point = row["reorder_point"]
    return (
        (q is None or q.lower() in row["name"].lower() or q.lower() in row["sku"].lower())
        and ("sku_prefix" not in params or row["sku"].lower().startswith(params["sku_prefix"]))
        and ("quantity_max" not in params or row["quantity"] <= params["quantity_max"])
        and ("low_stock" not in params or (point is not None and row["quantity"] <= point))
    )


COMBINATIONS: list[dict[str, Any]] = [
    {"q": "mug"},
    {"q": "Mu"},
    {"q": "a_b"},
    {"q": "50%"},
    {"q": "cup", "sku_prefix": "mug"},
    {"q": "mug", "quantity_max": 2},
    {"q": "x", "low_stock": "true"},
    {"sku_prefix": "box", "low_stock": "true", "quantity_max": 1},
    {"q": "plate", "sku_prefix": "cup", "quantity_max": 10, "low_stock": "true"},
    {"low_stock": "true"},
    {"quantity_max": 0},
]


@pytest.mark.parametrize("params", COMBINATIONS)
@pytest.mark.parametrize("accept", list(FORMATS))
async def test_filters_combine_in_exports_and_pages_of_every_format(
    client: AsyncClient, db: Connection[Any], params: dict[str, Any], accept: str
) -> None:
    rows = _catalogue(db)
    expected = [r["sku"] for r in rows if _matches(r, params)]
    assert expected  # every combination finds something here
    parse = FORMATS[accept]

    export = await client.get("/products", params=params, headers={"accept": accept})
    url = "/products?" + "&".join(f"{k}={v}" for k, v in {**params, "limit": 4}.items())
    url = url.replace("%", "%25")
    pages = await walk(client, url, accept=accept)

    assert export.status_code == 200
    assert parse(export.text) == expected
    assert [sku for page in pages for sku in parse(page.text)] == expected
    assert all(len(parse(page.text)) <= 4 for page in pages)


async def _first_page(client: AsyncClient, **params: Any) -> Response:
    response = await client.get("/products", params={**params, "limit": 1})
    assert response.status_code == 200
    assert next_url(response) is not None
    return response


def _after(response: Response) -> str:
    url = next_url(response)
    assert url is not None
    return parse_qs(urlsplit(url).query)["after"][0]


@pytest.mark.parametrize(
    ("issued", "reused"),
    [
        ({"q": "mug"}, {"q": "cup"}),
        ({"q": "mug"}, {}),
        ({}, {"q": "mug"}),
        ({"q": "mug"}, {"q": "mug", "low_stock": "true"}),
        ({"quantity_max": 5}, {"quantity_max": 6}),
        ({"sku_prefix": "mug"}, {"sku_prefix": "cup"}),
        ({"low_stock": "true"}, {}),
    ],
)
async def test_a_cursor_is_bound_to_its_filters(
    client: AsyncClient, db: Connection[Any], issued: dict[str, Any], reused: dict[str, Any]
) -> None:
    _catalogue(db)
    after = _after(await _first_page(client, **issued))

    response = await client.get("/products", params={**reused, "after": after, "limit": 1})

    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["field"] == "after"


async def test_a_cursor_serves_the_same_filters_in_any_case_format_or_page_size(
    client: AsyncClient, db: Connection[Any]
) -> None:
    _catalogue(db)
    after = _after(await _first_page(client, q="mug", sku_prefix="MUG"))

    for params, accept in [
        ({"q": "mug", "sku_prefix": "mug", "limit": 5}, "text/csv"),
        ({"q": "mug", "sku_prefix": "Mug"}, "application/x-ndjson"),
    ]:
        response = await client.get(
            "/products", params={**params, "after": after}, headers={"accept": accept}
        )
        assert response.status_code == 200, response.text


async def test_a_short_term_page_reads_a_bounded_window_and_the_walk_stays_exact(
    client: AsyncClient, db: Connection[Any]
) -> None:
    # 2.5 windows of products; the two-letter term is only in the last few.
    total = SCAN_BUDGET * 5 // 2
    db.execute(
        "INSERT INTO products (sku, name, price, created_at) "
        "SELECT 'S-' || i, CASE WHEN i > %s THEN 'zq item' ELSE 'item' END, 1, "
        "'2026-01-01Z'::timestamptz + i * interval '1 ms' FROM generate_series(1, %s) i",
        (total - 3, total),
    )

    first = await client.get("/products", params={"q": "zq", "limit": 10})
    pages = await walk(client, "/products?q=zq&limit=10")

    # The first window held no match: an empty page that still links to the next.
    assert first.json() == [] and next_url(first) is not None
    assert [len(p.json()) for p in pages] == [0, 0, 3]
    assert [p["sku"] for page in pages for p in page.json()] == [
        f"S-{i}" for i in range(total - 2, total + 1)
    ]
    export = await client.get("/products", params={"q": "zq"})
    assert [p["sku"] for p in export.json()] == [f"S-{i}" for i in range(total - 2, total + 1)]


async def test_a_short_term_page_is_full_when_its_window_has_enough(
    client: AsyncClient, db: Connection[Any]
) -> None:
    add(db, *((f"F-{i}", "ab", 1, None) for i in range(30)))

    pages = await walk(client, "/products?q=ab&limit=7")

    assert [len(p.json()) for p in pages] == [7, 7, 7, 7, 2]

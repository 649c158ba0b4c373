"""A Python client generated from the live server's /openapi.json drives the walk-through.

With docs/api.md's own command line (openapi-python-client with docs/python-client.yaml),
into a temporary directory, at test time (nothing downloaded: the generator is a dev requirement).
The generator must warn about nothing but the one body it cannot take (NDJSON), and the
generated functions are named after the operation ids. docs/api.md's example runs as written.
"""

import asyncio
import importlib
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.cluster import REPO
from tests.live_inprocess import live_server

pytestmark = pytest.mark.slow

CONFIG = REPO / "docs" / "python-client.yaml"
DOC = REPO / "docs" / "api.md"
DOC_URL = "http://127.0.0.1:8000"
PACKAGE = "inventory_client"


def documented_command() -> list[str]:
    """The generator's command line exactly as docs/api.md gives it."""
    lines = DOC.read_text().splitlines()
    [command] = [line for line in lines if line.startswith("openapi-python-client generate ")]
    return shlex.split(command)


def documented_example() -> tuple[str, str]:
    """docs/api.md's client example, and what its last line's comment says it prints."""
    section = DOC.read_text().split("### A generated client", 1)[1]
    [example] = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    printed = re.search(r"# (.+)$", example.rstrip().splitlines()[-1])
    assert printed, "the example's last line says what it prints"
    return example, printed.group(1)


async def _generate(url: str, into: Path) -> str:
    async with httpx.AsyncClient() as http:
        document = (await http.get(f"{url}/openapi.json")).raise_for_status().text
    await asyncio.to_thread((into / "openapi.json").write_text, document)
    # docs/api.md's paths are the repo's: its config file is copied to the same place here.
    (into / "docs").mkdir()
    await asyncio.to_thread(shutil.copy, CONFIG, into / "docs")
    bin_dir = Path(sys.executable).parent
    program, *args = documented_command()
    process = await asyncio.create_subprocess_exec(
        str(bin_dir / program),
        *args,
        cwd=into,
        # The generator formats its output with ruff, found on PATH.
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await process.communicate())[0].decode()
    assert process.returncode == 0, output
    return output


async def _run_example(url: str, generated: Path) -> tuple[int, str, str]:
    example, _ = documented_example()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        example.replace(DOC_URL, url),
        cwd=generated,
        env={**os.environ, "PYTHONPATH": str(generated)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_generated_client_walks_through_the_readme(
    settings: Settings, tmp_path: Path
) -> None:
    async with live_server(settings) as url:
        output = await _generate(url, tmp_path)
        # Every operation has its function; only NDJSON bodies are beyond the generator.
        assert "will not be generated" not in output, output
        assert output.count("Unsupported content type") <= 1, output

        sys.path.insert(0, str(tmp_path))
        try:
            await _walk_through(url)
        finally:
            sys.path.remove(str(tmp_path))
            for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
                del sys.modules[name]

        # docs/api.md's example as written: it prints what its comment says; run again, its
        # product exists, and it stops on the 409 instead of carrying on.
        _, printed = documented_example()
        status, out, err = await _run_example(url, tmp_path)
        assert (status, out) == (0, printed + "\n"), err
        status, out, err = await _run_example(url, tmp_path)
        assert (status, out) == (1, ""), err
        assert err.startswith("duplicate_sku: "), err


def _api(path: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{path}")


async def _walk_through(url: str) -> None:
    client = _api("client").Client(base_url=url, raise_on_unexpected_status=True)
    models = _api("models")
    create_product = _api("api.products.create_product")
    get_product = _api("api.products.get_product")
    list_products = _api("api.products.list_products")
    import_products = _api("api.products.import_products")
    adjust_stock = _api("api.stock.adjust_stock")
    list_changes = _api("api.changes.list_changes")
    types = _api("types")

    async with client as c:
        # add a product: 201 with the stored product, its price as a 2-decimal string
        created = await create_product.asyncio_detailed(
            client=c,
            body=models.ProductCreate(sku="ABC-1", name="Blue mug", price="19.99", quantity=5),
        )
        assert created.status_code == 201
        assert isinstance(created.parsed, models.ProductRead)
        assert (created.parsed.price, created.headers["location"]) == ("19.99", "/products/ABC-1")

        # the same SKU in another case: 409, parsed as the Problem model
        duplicate = await create_product.asyncio_detailed(
            client=c, body=models.ProductCreate(sku="abc-1", name="Other mug", price=5)
        )
        assert duplicate.status_code == 409
        assert isinstance(duplicate.parsed, models.Problem)
        assert duplicate.parsed.code == "duplicate_sku"

        # one product, found ignoring case
        found = await get_product.asyncio(client=c, sku="abc-1")
        assert (found.sku, found.quantity) == ("ABC-1", 5)

        # goods in under an Idempotency-Key, then a sale that would go negative: 409
        adjusted = await adjust_stock.asyncio(
            client=c,
            sku="ABC-1",
            body=models.AdjustmentCreate(
                delta=10, reason=models.AdjustmentCreateReason.RECEIVED, note="PO 4711"
            ),
            idempotency_key="po-4711",
        )
        assert adjusted.quantity == 15
        short = await adjust_stock.asyncio(
            client=c,
            sku="ABC-1",
            body=models.AdjustmentCreate(delta=-100, reason=models.AdjustmentCreateReason.SOLD),
        )
        assert isinstance(short, models.Problem)
        assert (short.code, short.additional_properties["available"]) == ("insufficient_stock", 15)

        # a small CSV, all or nothing
        mugs = b"sku,name,price,quantity\nMUG-2,Red mug,12.50,10\nMUG-3,Green mug,12.50,4\n"
        imported = await import_products.asyncio(
            client=c, body=types.File(payload=mugs, file_name="mugs.csv")
        )
        assert (imported.created, imported.updated, imported.unchanged) == (2, 0, 0)

        # a page of two, then the next page from the Link header's cursor
        first = await list_products.asyncio_detailed(client=c, limit=2)
        assert [p.sku for p in first.parsed] == ["ABC-1", "MUG-2"]
        cursor = httpx.URL(first.headers["link"].split(";")[0].strip("<>")).params["after"]
        rest = await list_products.asyncio(client=c, limit=2, after=cursor)
        assert [p.sku for p in rest] == ["MUG-3"]

        # the change log, page by page, passing the last seq seen. Events are numbered within
        # INVENTORY_CHANGES_POLL_SECONDS of their commit, so the import's may not be served
        # yet: a client following the log asks again, as this one does, for up to 10 s.
        seen: list[tuple[str, str]] = []
        after: int | Any = types.UNSET
        deadline = time.monotonic() + 10
        while len(seen) < 4 and time.monotonic() < deadline:
            page = await list_changes.asyncio(client=c, after=after, limit=2)
            if not page:
                await asyncio.sleep(0.05)
                continue
            seen += [(event.type_.value, event.sku) for event in page]
            after = int(page[-1].seq)
        assert await list_changes.asyncio(client=c, after=after, limit=2) == []
        assert seen == [
            ("product.created", "ABC-1"),
            ("product.updated", "ABC-1"),
            ("product.created", "MUG-2"),
            ("product.created", "MUG-3"),
        ]

"""The layout's rules, read off the import graph of app/ (docs/development.md "Module map").

Core never reaches into a feature; routes never reach the database or build SQL; queries never
reach the HTTP framework or the HTTP plumbing; a feature reaches another only through its
queries, statements or schemas, never its router.
"""

import ast
from pathlib import Path

from tests.cluster import REPO

APP = REPO / "app"
FEATURES = (
    "products",
    "listing",
    "imports",
    "changes",
    "webhooks",
    "reports",
    "idempotency",
    "operations",
    "locations",
    "reservations",
)
# The assembly: what puts core and the features together into one app.
ASSEMBLY = ("app.main", "app.routes", "app.deps")
HTTP = ("fastapi", "starlette", "app.core.http")
DATABASE = ("psycopg", "psycopg_pool", "sqlalchemy", "app.models")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in APP.rglob("*.py")}
    assert "app.core.errors" in found and "app.products.router" in found
    return found


def imports_of(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Every absolute import: (module, the names taken from it; () for `import module`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, tuple(alias.name for alias in node.names)))
    return found


def targets(path: Path) -> set[str]:
    """The modules `path` imports, a `from package import module` counted as the module."""
    known = modules()
    names = set()
    for module, taken in imports_of(path):
        names.add(module)
        names |= {f"{module}.{name}" for name in taken if f"{module}.{name}" in known}
    return names


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_router(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in {"router"} or name.endswith("_router")


def is_queries(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last in {"queries", "statements", "parsing", "staging", "diagnosis"} or last.endswith(
        "_queries"
    )


def breaches(rule: str) -> list[str]:
    found = []
    for name, path in sorted(modules().items()):
        for target in sorted(targets(path)):
            if rule == "core" and within(name, ("app.core",)):
                bad = within(target, tuple(f"app.{f}" for f in FEATURES) + ASSEMBLY)
            elif rule == "routes" and is_router(name):
                bad = within(target, DATABASE)
            elif rule == "queries" and is_queries(name):
                bad = within(target, HTTP)
            elif rule == "features" and within(name, tuple(f"app.{f}" for f in FEATURES)):
                feature = name.split(".")[1]
                bad = is_router(target) and not target.startswith(f"app.{feature}.")
            else:
                bad = False
            if bad:
                found.append(f"{name} imports {target}")
    return found


def test_core_never_imports_a_feature_or_the_assembly() -> None:
    assert breaches("core") == []


def test_routes_never_import_the_database_drivers_or_the_models() -> None:
    assert breaches("routes") == []


def test_routes_take_nothing_from_app_database_but_the_connection_type() -> None:
    # Idempotent writes store their response in the write's own transaction, so a handler
    # passes the connection it is given on to one query; it never opens or runs one.
    taken = {
        (name, imported)
        for name, path in modules().items()
        if is_router(name)
        for module, names in imports_of(path)
        if module == "app.database"
        for imported in names or ("*",)
    }
    assert {imported for _, imported in taken} <= {"Connection"}, taken


def test_routes_hold_no_sql() -> None:
    sql = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "COPY ")
    found = [
        (name, node.value[:40])
        for name, path in modules().items()
        if is_router(name)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.lstrip().startswith(sql)
    ]
    assert found == []


def test_routes_never_open_a_connection_or_run_a_statement() -> None:
    calls = {"connection", "bulk", "cursor", "execute", "transaction", "copy"}
    found = [
        (name, node.attr)
        for name, path in modules().items()
        if is_router(name)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in calls
    ]
    assert found == []


def test_queries_never_import_http() -> None:
    assert breaches("queries") == []


def test_features_never_import_each_others_routers() -> None:
    assert breaches("features") == []


def test_the_rules_see_every_feature_package() -> None:
    # A rule that matched no module could not fail: each feature has a router (but
    # idempotency, which wraps other features' writes) and queries (but operations).
    names = modules()
    for feature in set(FEATURES) - {"idempotency"}:
        inside = [n for n in names if n.startswith(f"app.{feature}.")]
        assert any(is_router(n) for n in inside), feature
    assert sum(is_queries(n) for n in names) >= len(FEATURES) - 1


def test_the_module_map_names_every_package_and_module_of_app() -> None:
    page = (REPO / "docs" / "development.md").read_text()
    block = page.split("## Module map", 1)[1].split("```", 2)[1]
    named: set[str] = set()
    # An indented entry is inside the folder named above it, one level per two spaces.
    folders: dict[int, str] = {}
    for line in block.splitlines():
        entry = line.split()[0] if line.strip() else ""
        depth = (len(line) - len(line.lstrip())) // 2
        if depth == 0 and not entry.startswith("app/"):
            folders.clear()
            continue
        if not entry.endswith((".py", "/")) or (depth and depth - 1 not in folders):
            continue
        path = (folders[depth - 1] if depth else "") + entry
        named.add(path)
        if path.endswith("/"):
            folders[depth] = path
    on_disk = {
        str(p.relative_to(REPO)) + ("/" if p.is_dir() else "")
        for p in [*APP.glob("*.py"), *APP.glob("*/"), *(APP / "core").glob("**/*")]
        if p.name not in {"__init__.py", "__pycache__"} and "__pycache__" not in p.parts
    }
    # Every module of app/ and of core, every package (a feature's inside follows the shape
    # the map describes); and nothing named that is not there.
    packages = {n for n in on_disk if n.count("/") == 2 and n.endswith("/")}
    top = {n for n in on_disk if n.count("/") == 1} | packages
    assert sorted((top | {n for n in on_disk if n.startswith("app/core/")}) - named) == []
    assert sorted(n for n in named if "<" not in n and not (REPO / n).exists()) == []

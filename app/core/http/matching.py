"""Which routes serve a path, by the routes' own compiled patterns.

The app's routes are one flat list (app.routes), so a route's path is its whole template and
Starlette's `path_regex` is exactly what the router matches with.
"""

from collections.abc import Sequence

from starlette.routing import BaseRoute, Route


def matching(routes: Sequence[BaseRoute], path: str) -> list[Route]:
    """The routes whose template matches `path`, in the router's order."""
    return [r for r in routes if isinstance(r, Route) and r.path_regex.match(path)]


def route_methods(routes: Sequence[BaseRoute], path: str) -> set[str]:
    """The methods of the routes serving `path`, with HEAD wherever GET is (app.core.http.head).

    As OpenAPI matches paths, a concrete one wins over a template: /products/import is
    POST only, though /products/{sku} would also match it.
    """
    found = matching(routes, path)
    serving = [r for r in found if not r.param_convertors] or found
    methods: set[str] = set().union(*(r.methods or set() for r in serving))
    if "GET" in methods:
        methods.add("HEAD")
    return methods

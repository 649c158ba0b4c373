"""Hot routes that solve their common requests' parameters themselves.

FastAPI solves a route's dependencies and validates its parameters anew on every request,
re-inspecting each annotation as it goes: about a third of a lookup's CPU in the service
process (docs/performance.md). A hot route's endpoint can name a shortcut: given the
request, it returns the endpoint's keyword arguments when the request has the route's
common shape and every value is one FastAPI would accept and pass on unchanged; otherwise
None, and FastAPI solves the request as for any route, answering every error itself. So a
shortcut never decides an error, the endpoint is the same function either way, and the
OpenAPI document does not change.

A shortcut also does what the route's own dependencies do (the token check of a guarded
route, the refusal of unknown query parameters), or returns None.
"""

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute

# The endpoint's keyword arguments, or None: FastAPI solves this request.
Shortcut = Callable[[Request], Awaitable[dict[str, Any] | None]]

_SHORTCUT = "__inventory_shortcut__"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def shortcut(solve: Shortcut) -> Callable[[Endpoint], Endpoint]:
    """Decorator (under the route's): the endpoint's common requests are solved by `solve`."""

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _SHORTCUT, solve)
        return endpoint

    return mark


class ShortcutRoute(APIRoute):
    """An APIRoute whose endpoint may have a shortcut (see the module's docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        endpoint = self.endpoint
        if not hasattr(endpoint, _SHORTCUT):
            return handler

        async def solved(request: Request) -> Response:
            # Looked up per request (nanoseconds): tests compare answers without it.
            solve: Shortcut | None = getattr(endpoint, _SHORTCUT, None)
            arguments = None if solve is None else await solve(request)
            if arguments is None:
                return await handler(request)
            response: Response = await endpoint(**arguments)
            return response

        return solved

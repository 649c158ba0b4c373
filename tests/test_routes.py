"""How the app's routes are laid out: flat, and guarded only when tokens are configured."""

from fastapi.routing import APIRoute
from pydantic import SecretStr

from app.config import Settings
from app.deps import require_token
from app.main import create_app


def _guarded(route: APIRoute) -> bool:
    return any(d.dependency is require_token for d in route.dependencies)


def test_every_route_sits_on_the_app_itself() -> None:
    # An included router is a node FastAPI walks on every request; flat routes match in one
    # pass (app/routes/__init__.py).
    app = create_app(Settings(database_url="postgresql:///unused"))

    assert all(type(route).__name__ != "_IncludedRouter" for route in app.router.routes)
    assert {"/products/{sku}", "/changes", "/healthz"} <= {r.path for r in app.routes}


def test_the_token_check_runs_only_when_tokens_are_configured() -> None:
    open_app = create_app(Settings(database_url="postgresql:///unused"))
    locked_app = create_app(
        Settings(database_url="postgresql:///unused", api_tokens=SecretStr("t0ken-xyz"))
    )

    def lookup(app_routes: list) -> APIRoute:
        return next(
            r for r in app_routes if isinstance(r, APIRoute) and r.path == "/products/{sku}"
        )

    assert not _guarded(lookup(open_app.routes))
    assert _guarded(lookup(locked_app.routes))
    assert 401 in lookup(locked_app.routes).responses
    assert 401 not in lookup(open_app.routes).responses

"""The app with and without the request middleware, for bench/middleware_overhead.sh."""

from fastapi import FastAPI

from app.core.http.limits import BodyGuard
from app.core.observability import ObserveRequests
from app.main import create_app


def with_middleware() -> FastAPI:
    return create_app()


def without_middleware() -> FastAPI:
    app = create_app()
    app.user_middleware = [
        m for m in app.user_middleware if m.cls not in (ObserveRequests, BodyGuard)
    ]
    return app

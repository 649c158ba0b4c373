"""The app with and without the request middleware, for bench/middleware_overhead.sh."""

from fastapi import FastAPI

from app.limits import BodyGuard
from app.main import create_app
from app.observability import ObserveRequests


def with_middleware() -> FastAPI:
    return create_app()


def without_middleware() -> FastAPI:
    app = create_app()
    app.user_middleware = [
        m for m in app.user_middleware if m.cls not in (ObserveRequests, BodyGuard)
    ]
    return app

"""HEAD answered wherever GET is (RFC 9110 9.3.2): same status and headers, no body."""

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _BodySkipped(Exception):
    """Raised from send() once the headers are out: the rest of a GET's body is not needed."""


class HeadAsGet:
    """Pure ASGI middleware: a HEAD request runs as GET and its body is dropped.

    The route runs as for GET (so the status and headers are the same, ETag included); as
    soon as the status line has gone out the body is cut short, so a HEAD of an export does
    not produce the export.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = False

        async def headers_only(message: Message) -> None:
            nonlocal ended
            if message["type"] == "http.response.start":
                await send(message)
                return
            if message["type"] == "http.response.body" and not ended:
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                if message.get("more_body", False):
                    raise _BodySkipped

        try:
            await self.app({**scope, "method": "GET"}, receive, headers_only)
        except _BodySkipped:
            pass
        except BaseExceptionGroup as group:
            if not _only_skips(group):
                raise


def _only_skips(group: BaseExceptionGroup[Any]) -> bool:
    return group.split(_BodySkipped)[1] is None

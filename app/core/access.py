"""Who may call the API: bearer tokens, and where an open API may be reached (docs/api.md "Access").

Tokens come from INVENTORY_API_TOKENS (read-write) and INVENTORY_READ_TOKENS (read-only).
A variable that is set but holds no usable token is a start-up error, never an open API.
With no tokens at all the API is open, and then it answers only on loopback unless
INVENTORY_ALLOW_OPEN=1 says that is intended: the check runs at start-up on the sockets
the process already listens on, and on every request's local address.
"""

import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings
from app.core.errors import ApiError, Forbidden, Unauthorized

logger = logging.getLogger("app.auth")

# What a token guards when tokens are configured (docs/api.md "Access"); the rest is open.
PROTECTED = (
    "/products",
    "/locations",
    "/transfers",
    "/reservations",
    "/changes",
    "/reports",
    "/webhooks",
)
# Methods a read-only token may use; everything else writes.
READ_METHODS = frozenset({"GET", "HEAD"})
# The credential of requests to an open API: they all share one idempotency namespace.
ANONYMOUS = ""
# Where TokenCheck leaves the request's Caller, for BodyGuard and the route dependencies.
CALLER_KEY = "inventory.caller"


@dataclass(frozen=True)
class Caller:
    """Who a request acts as: its credential (a digest of its token; ANONYMOUS on an open
    API), and whether that token may write."""

    credential: str
    writer: bool


def is_protected(path: str) -> bool:
    """Whether a token guards `path` when tokens are configured (a prefix, segment-wise)."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PROTECTED)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of the first Authorization header, read as FastAPI's HTTPBearer reads it:
    None unless it is `Bearer <token>` (scheme in any case)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class TokenConfigError(ValueError):
    """A token variable is set but holds no usable token."""


class ExposedOpenApi(RuntimeError):
    """An API without tokens would answer beyond loopback, and that was not allowed."""


def _digests(name: str, tokens: SecretStr | None) -> tuple[bytes, ...]:
    if tokens is None:
        return ()
    raw = [t.strip() for t in tokens.get_secret_value().split(",")]
    usable = tuple(hashlib.sha256(t.encode()).digest() for t in raw if t)
    if not usable:
        raise TokenConfigError(
            f"{name} is set but holds no token: give comma-separated tokens, or unset it "
            "(with no tokens at all the API is open)"
        )
    return usable


def token_file(path: Path) -> SecretStr:
    """The read-write tokens in `path` (comma- or line-separated); a new one when there is
    no such file yet.

    The new token is written to a file only its owner may read (0600, its directory 0700),
    atomically: processes starting together (uvicorn's workers, several instances on one
    volume) end up with the same single token. Where it is gets logged at WARNING, the
    token never. Raises TokenConfigError for a file others may read or write.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        _create_token_file(path)
    else:
        if mode & 0o077:
            raise TokenConfigError(
                f"{path} holds API tokens and others may read it (mode {mode & 0o777:o}): "
                f"chmod 600 {path}"
            )
    return SecretStr(path.read_text().replace("\n", ","))


def _create_token_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        # A link fails when the name exists: whoever links first wrote the token all use.
        try:
            os.link(draft, path)
        except FileExistsError:
            return
    finally:
        draft.unlink(missing_ok=True)
    logger.warning(
        "generated a read-write API token into %s (readable by its owner only); send it as "
        "'Authorization: Bearer <token>'",
        path,
    )


def _any_match(candidate: bytes, digests: tuple[bytes, ...]) -> bool:
    # Every configured token is compared, with no early exit, and all digests have one length:
    # the time taken tells nothing about which token (if any) matched, or how long it is.
    found = False
    for digest in digests:
        found |= hmac.compare_digest(candidate, digest)
    return found


@dataclass(frozen=True)
class Access:
    """The configured tokens, kept only as SHA-256 digests."""

    writers: tuple[bytes, ...]
    readers: tuple[bytes, ...]
    allow_open: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> "Access":
        """Raises TokenConfigError for a token variable that is set but empty, or a token
        file that cannot be used (see token_file)."""
        writers = _digests("INVENTORY_API_TOKENS", settings.api_tokens)
        if settings.api_token_file:
            writers += _digests(
                f"INVENTORY_API_TOKEN_FILE ({settings.api_token_file})",
                token_file(Path(settings.api_token_file)),
            )
        return cls(
            writers,
            _digests("INVENTORY_READ_TOKENS", settings.read_tokens),
            settings.allow_open,
        )

    @property
    def open(self) -> bool:
        return not self.writers and not self.readers

    def authenticate(self, token: str | None) -> Caller:
        """The Caller a bearer token makes; raises Unauthorized (no or unknown token).

        The credential is a digest of the token: it scopes Idempotency-Keys and bulk slots,
        and it is not the token.
        """
        if self.open:
            return Caller(ANONYMOUS, writer=True)
        if token is None:
            raise Unauthorized(
                "This API needs an 'Authorization: Bearer <token>' header.", invalid_token=False
            )
        candidate = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        # Both lists, always: the time taken must not tell a writer's token from a reader's.
        writer = _any_match(candidate, self.writers)
        reader = _any_match(candidate, self.readers)
        if not (writer or reader):
            raise Unauthorized("The bearer token is not valid.", invalid_token=True)
        return Caller(candidate.hex(), writer=writer)

    def authorize(self, caller: Caller, method: str, *, writers_only: bool = False) -> str:
        """The caller's credential; raises Forbidden for a read-only token writing, or
        reading where only read-write tokens may."""
        if not caller.writer and (writers_only or method not in READ_METHODS):
            raise Forbidden("This token may only read.")
        return caller.credential

    def check(self, method: str, token: str | None, *, writers_only: bool = False) -> str:
        """The credential a request with this method and bearer token acts as.

        Raises Unauthorized (no or unknown token) or Forbidden (a read-only token writing,
        or reading where only read-write tokens may).
        """
        return self.authorize(self.authenticate(token), method, writers_only=writers_only)

    def refuse_exposed_sockets(self) -> None:
        """At start-up: raise ExposedOpenApi when an open API listens beyond loopback."""
        if not self.open:
            return
        if self.allow_open:
            logger.warning(
                "no API tokens configured (INVENTORY_API_TOKENS, INVENTORY_READ_TOKENS): the "
                "API is open to anyone who can reach it (INVENTORY_ALLOW_OPEN=1)"
            )
            return
        self.refuse_exposure(_listening_addresses())
        logger.warning(
            "no API tokens configured (INVENTORY_API_TOKENS, INVENTORY_READ_TOKENS): the API "
            "is open to local clients and answers only on loopback"
        )

    def refuse_bind(self, host: str) -> None:
        """Before binding `host` (a name or an address): raise ExposedOpenApi when an open
        API would answer beyond loopback there. run.sh asks before it starts uvicorn."""
        try:
            addresses = [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
        except OSError:
            addresses = [host]
        self.refuse_exposure(addresses)

    def refuse_exposure(self, addresses: list[str]) -> None:
        if not self.open or self.allow_open:
            return
        exposed = [address for address in addresses if not _is_loopback(address)]
        if exposed:
            raise ExposedOpenApi(
                f"no API tokens are configured and the server would answer on {exposed[0]}: "
                "set INVENTORY_API_TOKENS (and/or INVENTORY_READ_TOKENS), listen on "
                "127.0.0.1, or set INVENTORY_ALLOW_OPEN=1 if an open API is intended"
            )


# Asked on every request of an open API for the address it came in on: a server has few.
@functools.lru_cache(maxsize=64)
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # not an IP address (a unix socket, a test transport): not a network


def _is_server_socket(sock: socket.socket) -> bool:
    """A TCP socket bound to a port and connected to nobody: a server's socket.

    Not SO_ACCEPTCONN: uvicorn's workers share one socket that the first of them to start
    serving puts into listening mode, so an earlier worker sees it bound but not listening.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    try:
        if sock.getsockname()[1] == 0:
            return False
        sock.getpeername()
    except OSError:
        return True  # ENOTCONN: bound and not connected
    return False


def _listening_addresses() -> list[str]:
    """The local addresses of the server TCP sockets this process holds (Linux: /proc).

    Under `uvicorn --workers N` (and gunicorn) the sockets exist before the app starts;
    a single uvicorn process binds after start-up, and the request check below covers it.
    """
    addresses = []
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return []
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if _is_server_socket(sock):
                addresses.append(str(sock.getsockname()[0]))
        finally:
            sock.detach()  # the descriptor stays open: it belongs to the server
    return addresses


class LoopbackOnly:
    """Pure ASGI middleware for an open API: requests that reached the server on a
    non-loopback address are refused (403) unless INVENTORY_ALLOW_OPEN=1."""

    def __init__(self, app: ASGIApp, *, retry_after: int) -> None:
        self.app = app
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server and not _is_loopback(str(server[0])):
            refusal = Forbidden(
                "This server has no API tokens configured and answers only on loopback. Set "
                "INVENTORY_API_TOKENS, or INVENTORY_ALLOW_OPEN=1 if an open API is intended."
            )
            await refusal.response(retry_after=self.retry_after)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class TokenCheck:
    """Pure ASGI middleware, with tokens configured: a protected path's token is checked
    from the headers alone, before any byte of the body is read.

    No token or an unknown one is 401, a read-only token writing 403, and the body is never
    read, let alone parsed: a client without a valid token costs a header's worth of work.
    The answer then closes the connection, so the server does not read that body either.
    The Caller is left in the scope (CALLER_KEY) for BodyGuard and the routes.
    """

    def __init__(self, app: ASGIApp, *, access: Access, retry_after: int) -> None:
        self.app = app
        self.access = access
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            caller = self.access.authenticate(bearer_token(scope["headers"]))
            self.access.authorize(caller, scope["method"])
        except ApiError as refusal:
            if _has_body(scope["headers"]):
                refusal.headers["Connection"] = "close"
            await refusal.response(retry_after=self.retry_after)(scope, receive, send)
            return
        scope[CALLER_KEY] = caller
        await self.app(scope, receive, send)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
        if name == b"transfer-encoding":
            return True
    return False

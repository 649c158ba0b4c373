"""Bearer tokens for /products: who may read and who may write (API.md "Access")."""

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.config import Settings
from app.errors import ApiError

logger = logging.getLogger("app.auth")

# Methods a read-only token may use; everything else writes.
READ_METHODS = frozenset({"GET", "HEAD"})

# auto_error=False: a missing or non-Bearer header comes back as None, and the 401 below is
# ours (problem+json, WWW-Authenticate). The scheme also puts `bearerAuth` into the OpenAPI.
_bearer = HTTPBearer(
    scheme_name="bearerAuth",
    description="A token from INVENTORY_API_TOKENS (read-write) or INVENTORY_READ_TOKENS "
    "(GET only). Not needed when the server runs without tokens.",
    auto_error=False,
)


def _digests(tokens: SecretStr) -> tuple[bytes, ...]:
    raw = (t.strip() for t in tokens.get_secret_value().split(","))
    return tuple(hashlib.sha256(t.encode()).digest() for t in raw if t)


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

    @classmethod
    def from_settings(cls, settings: Settings) -> "Access":
        return cls(_digests(settings.api_tokens), _digests(settings.read_tokens))

    @property
    def open(self) -> bool:
        return not self.writers and not self.readers

    def check(self, method: str, token: str | None) -> None:
        """Return when a request with this method and bearer token may proceed.

        Raises ApiError 401 `unauthorized` (no or unknown token) or 403 `forbidden` (a
        read-only token used for a write).
        """
        if self.open:
            return
        if token is None:
            raise ApiError(
                401,
                "unauthorized",
                "This API needs an 'Authorization: Bearer <token>' header.",
                headers={"WWW-Authenticate": 'Bearer realm="inventory"'},
            )
        candidate = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        writer = _any_match(candidate, self.writers)
        reader = _any_match(candidate, self.readers)
        if not (writer or reader):
            raise ApiError(
                401,
                "unauthorized",
                "The bearer token is not valid.",
                headers={"WWW-Authenticate": 'Bearer realm="inventory", error="invalid_token"'},
            )
        if not writer and method not in READ_METHODS:
            raise ApiError(403, "forbidden", "This token may only read.")


def install(app: FastAPI, settings: Settings) -> None:
    app.state.access = Access.from_settings(settings)


def warn_if_open(app: FastAPI) -> None:
    """Log the start-up warning API.md asks for when no token is configured."""
    access: Access = app.state.access
    if access.open:
        logger.warning(
            "no API tokens configured (INVENTORY_API_TOKENS, INVENTORY_READ_TOKENS): "
            "/products is open to anyone who can reach this server"
        )


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Dependency for every /products route (attached in app.routes)."""
    access: Access = request.app.state.access
    access.check(request.method, None if credentials is None else credentials.credentials)

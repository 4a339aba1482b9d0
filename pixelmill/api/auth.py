"""Who is calling: ``Authorization: Bearer <key>`` checked on every route but the open ones.

The rule (see README, Security):

* keys exist → every protected route needs a valid, unrevoked key, whatever the address;
* no keys, bound to loopback (or ``--insecure-no-auth``) → open: a developer's laptop;
* no keys, bound to anything else → every protected route answers 401 (``serve`` refuses
  to start in that state; this covers the last key being revoked while running).

Open routes: ``/health``, ``/v1/files/{id}`` (capability URLs: ids are unguessable) and the
API docs (``/docs``, ``/redoc``, ``/openapi.json``: the same facts as the source code).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pixelmill.auth.bind import is_loopback
from pixelmill.auth.keys import Principal, parse_rate
from pixelmill.auth.ratelimit import RateLimiter, retry_after_s
from pixelmill.auth.store import KeyStore
from pixelmill.core.errors import Forbidden, Overloaded, Unauthorized
from pixelmill.settings import Settings

bearer = HTTPBearer(auto_error=False, description="An API key made with `pixelmill keys create`.")


class Authenticator:
    """Turns a bearer token into a :class:`Principal`, and applies per-key rate limits."""

    def __init__(self, settings: Settings, keys: KeyStore, limiter: RateLimiter | None = None):
        self.keys = keys
        self.limiter = limiter or RateLimiter()
        self.open_allowed = is_loopback(settings.host) or settings.insecure_no_auth

    def authenticate(self, token: str | None) -> Principal:
        """The caller for ``token`` (None: no header); :class:`Unauthorized` if refused. Blocking."""
        key = self.keys.lookup(token) if token else None
        if key is not None:
            return Principal(key)
        if not self.keys.has_active():
            if self.open_allowed:
                return Principal()  # open mode: any or no token is fine
            raise Unauthorized(
                "this server has no API keys yet; create one with `pixelmill keys create --name NAME`"
            )
        if token:
            raise Unauthorized("invalid or revoked API key")
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")

    def check_rate(self, principal: Principal) -> None:
        """Take one submission token from the caller's bucket; :class:`Overloaded` if empty."""
        if principal.key is None or principal.key.rate is None:
            return
        wait = self.limiter.acquire(principal.key.id, parse_rate(principal.key.rate))
        if wait > 0:
            raise Overloaded(
                f"rate limit of this API key ({principal.key.rate}) reached; retry later",
                retry_after=retry_after_s(wait),
            )


def get_authenticator(request: Request) -> Authenticator:
    return request.app.state.auth


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Dependency of every protected route: the caller, or 401."""
    token = credentials.credentials if credentials else None
    return await asyncio.to_thread(get_authenticator(request).authenticate, token)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def submitter(request: Request, principal: PrincipalDep) -> Principal:
    """Dependency of routes that create jobs: the caller, after the per-key rate limit."""
    get_authenticator(request).check_rate(principal)
    return principal


async def require_admin(principal: PrincipalDep) -> Principal:
    """Dependency of admin routes: an admin key (or open mode), else 403."""
    if not principal.is_admin:
        raise Forbidden("this route needs an API key with the admin scope")
    return principal


SubmitterDep = Annotated[Principal, Depends(submitter)]
AdminDep = Annotated[Principal, Depends(require_admin)]

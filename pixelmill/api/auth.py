"""Who is calling: ``Authorization: Bearer <key>`` checked on every route but the open ones.

HTTP Basic with the key as the password is read the same way (A1111 clients send their
``--api-auth`` so); :func:`credential_from` is the one parser of the header.

The rule (see README, Security):

* keys exist → every protected route needs a valid, unrevoked key, whatever the address;
* no keys, bound to loopback (or ``--insecure-no-auth``) → open: a developer's laptop;
* no keys, bound to anything else → every protected route answers 401 (``serve`` refuses
  to start in that state; this covers the last key being revoked while running).

Open routes: ``/health``, ``/v1/files/{id}`` (capability URLs: ids are unguessable) and the
API docs (``/docs``, ``/redoc``, ``/openapi.json``: the same facts as the source code).
``/metrics`` is an admin route unless ``--metrics-public`` opens it (see :mod:`.metrics`).

A request with a body is authenticated by the API middleware before the body is read
(an unauthenticated client cannot make the server hold its upload); the route's
dependency then reuses that result. In open mode, admin routes also refuse requests that
a browser page of another site sent: without keys, nothing else shows a person chose them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pixelmill.api.origin import cross_site_reason
from pixelmill.auth.bind import is_loopback
from pixelmill.auth.keys import Principal, parse_rate
from pixelmill.auth.ratelimit import RateLimiter, retry_after_s
from pixelmill.auth.store import KeyStore
from pixelmill.core.errors import Forbidden, Overloaded, Unauthorized
from pixelmill.settings import Settings

bearer = HTTPBearer(auto_error=False, description="An API key made with `pixelmill keys create`.")


def credential_from(authorization: str | None) -> str | None:
    """The API key an ``Authorization`` header carries; None for none (an empty header too).

    ``Bearer <key>``, or HTTP Basic with the key as the password (the user name is free:
    A1111 clients send ``--api-auth user:password`` this way; a Basic header with only a
    user name uses it as the key). A header this cannot read is returned as it is, so
    it fails as a wrong key rather than passing as no credentials.
    """
    scheme, _, value = (authorization or "").strip().partition(" ")
    value = value.strip()
    if not scheme:
        return None
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):  # not base64 of "user:password": a wrong key
            return authorization
        return password or user or None
    return authorization


class Authenticator:
    """Turns a bearer token into a :class:`Principal`, and applies per-key rate limits."""

    def __init__(self, settings: Settings, keys: KeyStore, limiter: RateLimiter | None = None):
        self.keys = keys
        self.limiter = limiter or RateLimiter()
        self.open_allowed = is_loopback(settings.host) or settings.insecure_no_auth
        self.public_url = settings.public_url

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
    known = request.scope.get("state", {}).get("principal")
    if known is not None:
        return known  # authenticated by the middleware before the body was read
    # Bearer or Basic, read by the one parser the middleware uses (``credentials`` documents Bearer).
    token = credential_from(request.headers.get("authorization"))
    return await asyncio.to_thread(get_authenticator(request).authenticate, token)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def submitter(request: Request, principal: PrincipalDep) -> Principal:
    """Dependency of routes that create jobs: the caller, after the per-key rate limit."""
    get_authenticator(request).check_rate(principal)
    return principal


async def require_admin(request: Request, principal: PrincipalDep) -> Principal:
    """Dependency of admin routes: an admin key (or open mode, but not from another site's page), else 403."""
    if not principal.is_admin:
        raise Forbidden("this route needs an API key with the admin scope")
    if principal.key is None:
        # Open mode: --cors-origins does not count here; admin routes are for programs and this server's own pages.
        reason = cross_site_reason(request.headers, public_url=get_authenticator(request).public_url)
        if reason:
            raise Forbidden(f"admin routes of a server without API keys refuse requests from other sites' pages: {reason}")
    return principal


SubmitterDep = Annotated[Principal, Depends(submitter)]
AdminDep = Annotated[Principal, Depends(require_admin)]

"""ASGI middleware: what every request goes through before, around and after its route.

In order, each step before the body is read so that a refused client costs no memory:

1. a request id (``X-Request-Id`` on every answer, and in the log next to any traceback);
2. a browser page of another site may not change anything (403, see :mod:`.origin`), nor
   reach a loopback server under a foreign host name (403, DNS rebinding);
3. a declared body over the limit is refused (413);
4. with API keys on, the caller is authenticated *before* the body is read (401);
5. the body bytes held across all requests are bounded (429 with Retry-After);
6. the body must arrive within ``--body-timeout-s`` (408, connection closed) and is
   counted as it arrives, so an oversized upload is never buffered past the limit (413);
7. the route runs with the request's pixel budget and the shared CPU pool
   (:mod:`pixelmill.images.budget`, :mod:`.offload`); a client that hangs up ends its
   route at once (a job it queued goes on), and a server shutting down ends the routes
   still open (503) when uvicorn's graceful-shutdown time is up;
8. the last-resort 500: the traceback goes to the log, the client gets the request id.

Every request's log lines carry its id (:mod:`pixelmill.observe.logs`), and its route
template and status are counted for ``/metrics`` (:mod:`.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelmill.api.auth import credential_from
from pixelmill.api.errors import error_response, shape_for
from pixelmill.api.metrics import route_labels
from pixelmill.api.offload import CpuPool, using
from pixelmill.api.origin import SAFE_METHODS, cross_site_reason, is_browser, rebinding_reason
from pixelmill.auth.bind import is_loopback
from pixelmill.core.errors import Forbidden, InvalidRequest, Overloaded, PayloadTooLarge, PixelmillError, Unauthorized
from pixelmill.images.budget import pixel_budget
from pixelmill.observe.logs import request_id_var
from pixelmill.settings import Settings

log = logging.getLogger("pixelmill.api")

REPLAY_SLICE = 64 << 10
"""Bytes of a buffered body handed to the route per ``receive`` (see :meth:`_Exchange.receive`)."""


class RequestContextMiddleware:
    """Request ids, the intake checks above, and the route's run; one per app."""

    def __init__(self, app: ASGIApp, *, settings: Settings, authenticator=None):
        self.app = app
        self.settings = settings
        self.authenticator = authenticator  # default: the app's ``state.auth``, looked up per request
        self.allowed_origins = frozenset(origin.rstrip("/") for origin in settings.cors_origins)
        self.loopback = is_loopback(settings.host)
        self.pool = CpuPool(settings.intake_threads)
        self.bodies = BodyBudget(settings.max_body_bytes_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        send, status = _status_tracked(_with_request_id(send, request_id))
        arrived, log_context = time.perf_counter(), request_id_var.set(request_id)
        headers = Headers(scope=scope)
        declared = _declared_length(headers)
        has_body = bool(declared) or "transfer-encoding" in headers
        limit = self._limit_for(headers)
        reservation = None
        try:
            try:
                reservation = await self._admit(scope, headers, declared, limit, has_body)
                async with asyncio.timeout(self.settings.body_timeout_s):
                    body = await _read_body(receive, limit)
            except _Refused as refused:
                # An unread body must not be taken for the next request on this connection.
                await _answer(scope, send, refused.error, request_id, status=refused.status, close=has_body)
                return
            except TimeoutError:
                error = InvalidRequest(f"the request body did not arrive within {self.settings.body_timeout_s:g} s",
                                       param="body", code="request_timeout")
                await _answer(scope, send, error, request_id, status=408, close=True)
                return
            except _ClientGone:
                return  # nobody is left to answer
            with pixel_budget(self.settings.max_request_pixels), using(self.pool):
                await _Exchange(body, send, on_start=lambda: _release(reservation)).run(
                    self.app, scope, receive, request_id
                )
        finally:
            _release(reservation)
            request_id_var.reset(log_context)
            _count(scope, status, time.perf_counter() - arrived)

    async def _admit(
        self, scope: Scope, headers: Headers, declared: int | None, limit: int, has_body: bool
    ) -> Callable[[], None] | None:
        """Checks that need no body: :class:`_Refused`, or the body's hold on the in-flight bytes."""
        refusal = self._screen(scope, headers)
        if refusal is None and declared is not None and declared > limit:
            refusal = PayloadTooLarge(f"request body exceeds the limit of {limit:,} bytes", param="body")
        if refusal is None and has_body:
            refusal = await self._authenticate(scope, headers)
        if refusal is not None:
            raise _Refused(refusal)
        if not has_body:
            return None
        reservation = self.bodies.reserve(min(declared or limit, limit))
        if reservation is None:
            raise _Refused(Overloaded("the server is receiving too many request bodies at once; retry shortly"))
        return reservation

    def _limit_for(self, headers: Headers) -> int:
        if headers.get("content-type", "").lower().startswith("multipart/"):
            return self.settings.max_multipart_bytes
        return self.settings.max_json_bytes

    def _screen(self, scope: Scope, headers: Headers) -> PixelmillError | None:
        """Refuse what a browser page of another site sent: writes, and any request to a
        loopback server under a foreign host name. Programs send no browser headers."""
        if not is_browser(headers):
            return None
        public_url = self.settings.public_url
        if self.loopback and (reason := rebinding_reason(headers, public_url=public_url)):
            return Forbidden(f"refused: {reason}")
        if scope["method"] not in SAFE_METHODS:
            reason = cross_site_reason(headers, allowed_origins=self.allowed_origins, public_url=public_url)
            if reason:
                return Forbidden(
                    f"cross-site request refused: {reason}. Pages of other sites may not change anything "
                    "here; allow an origin with --cors-origins, or call from a program"
                )
        return None

    async def _authenticate(self, scope: Scope, headers: Headers) -> PixelmillError | None:
        """The caller's key, checked before its body is read; the route reuses the result."""
        auth = self.authenticator or getattr(getattr(scope.get("app"), "state", None), "auth", None)
        if auth is None:
            return None
        token = credential_from(headers.get("authorization"))
        try:
            scope["state"]["principal"] = await asyncio.to_thread(auth.authenticate, token)
        except Unauthorized as exc:
            return exc
        except Exception:
            log.exception("request %s: authentication failed", scope["state"]["request_id"])
            return PixelmillError("internal server error")
        return None

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                self.pool.shutdown()
            await send(message)

        return lifespan_send


class BodyBudget:
    """Request-body bytes held now across all requests, against a limit (event loop only)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def reserve(self, size: int) -> Callable[[], None] | None:
        """Hold ``size`` bytes: a release function (idempotent), or None when over the limit."""
        if self.held + size > self.limit:
            return None
        self.held += size
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.held -= size

        return release


class _Exchange:
    """One request's run: the buffered body handed over, the client watched, the answer tracked."""

    def __init__(self, body: bytes, send: Send, *, on_start: Callable[[], None]):
        self._body: bytes | None = body
        self._offset = 0
        self._send = send
        self._on_start = on_start
        self.gone = asyncio.Event()
        self.started = self.complete = False

    async def receive(self) -> Message:
        if self._body is not None:
            # A large body goes to the route in slices with a turn of the loop between
            # them: parsing a 20 MiB multipart form (pure Python) would otherwise hold the
            # loop for a third of a second; sliced, every other client gets its turn.
            body, start = self._body, self._offset
            if start:
                await asyncio.sleep(0)
            end = start + REPLAY_SLICE
            more = end < len(body)
            self._offset = end
            if not more:
                self._body = None  # the route holds it now, not us
            return {"type": "http.request", "body": body[start:end] if start or more else body, "more_body": more}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self._on_start()  # the body's bytes count as held until the answer starts
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self._send(message)

    async def _watch(self, receive: Receive) -> None:
        """Wait for the client to hang up (servers also say so once the answer is complete)."""
        while (await receive())["type"] != "http.disconnect":
            await asyncio.sleep(0.05)  # a stray message: never spin on a server that repeats one
        self.gone.set()

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, request_id: str) -> None:
        route = asyncio.create_task(self._call(app, scope, request_id))
        watcher = asyncio.create_task(self._watch(receive))
        try:
            await asyncio.wait((route, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not route.done() and not self.complete:
                # The client hung up before its answer: stop working (and waiting) for it.
                # A job it queued is in the store and goes on; only this request ends.
                route.cancel()
            await asyncio.wait((route,))
        except asyncio.CancelledError:
            # Only the server cancels a request: uvicorn's graceful-shutdown time is up. It
            # does not wait for cancelled requests, so the answer goes out first, before
            # the route has unwound (writing it does not suspend unless the client stalls).
            route.cancel()
            if not self.started and not self.gone.is_set():
                error = PixelmillError("the server is shutting down; a job this request queued goes on "
                                       "(follow it under /v1/jobs)", code="shutting_down")
                await _answer(scope, self.send, error, request_id, status=503, close=True)
            asyncio.current_task().uncancel()  # ended on purpose: nothing above should see it
            await asyncio.wait((route,))
        finally:
            watcher.cancel()

    async def _call(self, app: ASGIApp, scope: Scope, request_id: str) -> None:
        try:
            await app(scope, self.receive, self.send)
        except Exception:
            # The traceback goes to the log under the request id; the client gets the
            # id and nothing else (no traceback, paths or secrets).
            log.exception("request %s: unexpected server error", request_id)
            if not self.started:
                await _answer(scope, self.send, PixelmillError("internal server error"), request_id, status=500)


class _Refused(Exception):
    """A request answered with ``error`` (``status`` overrides the error table's) before its route."""

    def __init__(self, error: PixelmillError, status: int | None = None):
        super().__init__(error.message)
        self.error, self.status = error, status


class _BodyTooLarge(_Refused):
    def __init__(self, limit: int):
        super().__init__(PayloadTooLarge(f"request body exceeds the limit of {limit:,} bytes", param="body"))


class _ClientGone(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body; :class:`_BodyTooLarge` as soon as it exceeds ``limit``, :class:`_ClientGone`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _declared_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def _release(reservation: Callable[[], None] | None) -> None:
    if reservation is not None:
        reservation()


def _status_tracked(send: Send) -> tuple[Send, dict[str, int]]:
    """``send``, noting the answer's status in the returned dict (``"code"``) as it starts."""
    status: dict[str, int] = {}

    async def tracked(message: Message) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]
        await send(message)

    return tracked, status


def _count(scope: Scope, status: dict[str, int], seconds: float) -> None:
    """Count the request for ``/metrics`` (by route template, after routing; 499: the client
    hung up before any answer, nginx's convention)."""
    metrics = getattr(getattr(scope.get("app"), "state", None), "http_metrics", None)
    if metrics is not None:
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # a client's token: bound it
        metrics.observe(*route_labels(scope), method, status.get("code", 499), seconds)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _with_request_id(send: Send, request_id: str) -> Send:
    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
        await send(message)

    return send_with_id


async def _answer(
    scope: Scope, send: Send, error: PixelmillError, request_id: str, *, status: int | None = None, close: bool = False
) -> None:
    """Answer with ``error``'s envelope (``status`` overrides the table's); ``close`` ends the connection."""
    response = error_response(error, request_id, shape_for(scope), status=status)
    if status == 503:
        response.headers["Retry-After"] = "5"
    if close:
        response.headers["Connection"] = "close"
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


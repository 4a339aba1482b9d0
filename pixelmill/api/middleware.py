"""ASGI middleware: a request id for every request, body-size limits, and the last-resort 500.

The body limit is applied before any route or parser sees the body: a declared
``Content-Length`` over the limit is refused at once, and a streamed body is counted as
it arrives, so an oversized upload is never buffered past the limit.
"""

from __future__ import annotations

import json
import logging
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelmill.api.errors import error_body
from pixelmill.core.errors import PayloadTooLarge, PixelmillError

log = logging.getLogger("pixelmill.api")


class RequestContextMiddleware:
    """Give each request an id (``X-Request-Id``) and refuse bodies over the limits."""

    def __init__(self, app: ASGIApp, *, max_json_bytes: int, max_multipart_bytes: int):
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_multipart_bytes = max_multipart_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        limit = self._limit_for(scope)
        body = await self._read_body(scope, receive, limit)
        if body is None:
            error = PayloadTooLarge(f"request body exceeds the limit of {limit:,} bytes", param="body")
            await _send_error(send_with_id, 413, error, request_id)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, _replay(body, receive), send_tracked)
        except Exception:
            # The traceback goes to the log under the request id; the client gets the
            # id and nothing else (no traceback, paths or secrets).
            log.exception("request %s: unexpected server error", request_id)
            if not started:
                await _send_error(send_with_id, 500, PixelmillError("internal server error"), request_id)

    def _limit_for(self, scope: Scope) -> int:
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if content_type.startswith("multipart/"):
            return self.max_multipart_bytes
        return self.max_json_bytes

    @staticmethod
    async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None as soon as it is known to exceed ``limit``."""
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards: wait for the client's disconnect, as usual

    return replay


async def _send_error(send: Send, status: int, error: PixelmillError, request_id: str) -> None:
    payload = json.dumps(error_body(error, request_id)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})

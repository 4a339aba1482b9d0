"""Drive one raw ASGI exchange, with control over the body's arrival and the client's hang-up.

httpx's ASGI transport always delivers a whole body at once and never hangs up; the intake
tests need a client that stalls, declares more than it sends, disconnects, or is cut off.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Exchange:
    """What the app answered, and how much of the body it asked for."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reads: int = 0
    """``receive()`` calls that delivered body bytes (0: the body was never read)."""


def http_scope(method: str, path: str, headers: list[tuple[str, str]]) -> dict:
    """An HTTP scope as uvicorn builds it (ASGI spec 2.3), from 127.0.0.1 to 127.0.0.1:8000."""
    names = {name.lower() for name, _ in headers}
    headers = [*headers, *([("host", "127.0.0.1:8000")] if "host" not in names else [])]
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }


async def exchange(
    app, method: str, path: str, *, headers: list[tuple[str, str]] = (), parts: list[bytes] = (b"",),
    stall: bool = False, hang_up_after: float | None = None, cancel_after: float | None = None,
    timeout: float = 10.0,
) -> Exchange:
    """Send ``parts`` as the body (then nothing more if ``stall``); hang up or cancel the
    app's task (as uvicorn does at the end of a graceful shutdown) after a delay."""
    result, pending, gone = Exchange(), list(parts), asyncio.Event()

    async def receive() -> dict:
        if pending:
            result.reads += 1
            part = pending.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(pending) or stall}
        if stall:
            await asyncio.Event().wait()  # the rest of the body never comes
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")
            if not message.get("more_body", False):
                gone.set()  # servers report a disconnect once the answer is complete

    task = asyncio.create_task(app(http_scope(method, path, list(headers)), receive, send))
    if hang_up_after is not None:
        await asyncio.wait((task,), timeout=hang_up_after)
        gone.set()
    if cancel_after is not None:
        await asyncio.wait((task,), timeout=cancel_after)
        task.cancel()
    await asyncio.wait_for(asyncio.shield(task), timeout)
    return result

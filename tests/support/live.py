"""A real HTTP server on loopback for an app built in the test process.

For compatibility tests with official clients (``openai``, ``webuiapi``, ``replicate``):
they speak HTTP over a socket, so they need a listening server, but most of them do not
need a separate ``pixelmill serve`` process and its model load. :class:`LiveServer` runs
uvicorn in a thread on a free 127.0.0.1 port, with the app's lifespan (its workers, on
whatever backend the test gave :func:`pixelmill.server.build_app`).
"""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

from tests.support.server import free_port


class LiveServer:
    """``with LiveServer(app) as server: ... server.url ...``; stops (and ends the lifespan) on exit."""

    def __init__(self, app: FastAPI, *, startup_timeout: float = 60):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._timeout = startup_timeout
        self._server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
            timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self._server.run, name=f"live-server-{self.port}", daemon=True)

    def __enter__(self) -> "LiveServer":
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the live server's thread ended before it started (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the live server on {self.url} did not start in {self._timeout} s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError(f"the live server on {self.url} did not stop in 30 s")

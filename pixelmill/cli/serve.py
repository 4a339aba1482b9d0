"""``pixelmill serve`` from start to exit: the port check, the server, an explicit model's failure.

Two ways a server used to start badly:

* **The port is taken.** uvicorn starts the app (and the model load) before it binds, so
  it printed the URL, then the bind error, then went on logging the model load and a
  "cannot schedule new futures after interpreter shutdown". :func:`port_problem` binds
  the address the way uvicorn (asyncio) will, before anything starts, and ``serve``
  stops with one line naming the port and ``--port``.
* **A model named explicitly does not load.** Only the *default* model falls back to the
  demo; ``--model`` / ``PIXELMILL_MODEL`` is a promise about what the server serves. A
  server that kept running with a failed engine answered 503 to every generation and
  looked healthy to a process supervisor. :func:`run_server` watches the embedded
  workers' backends while they load and, when one fails, shuts the server down and exits
  1 with one line: what failed, why, what to do.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from dataclasses import dataclass

from rich.console import Console

from pixelmill.settings import Settings

WATCH_INTERVAL_S = 0.1
STARTUP_FAILURE = 3
"""uvicorn's exit status when the server could not start (kept for the same case)."""


def port_problem(host: str, port: int) -> str | None:
    """Why ``serve`` could not listen on ``host:port``, in one sentence; None when it can.

    Binds and closes a socket for every address ``host`` resolves to, with the options the
    server's own bind uses (``SO_REUSEADDR``, as uvicorn and asyncio set it, so a port
    that only has connections in TIME_WAIT is free, and a listening one is not).
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {where}: {host!r} does not resolve ({exc.strerror}); check --host"
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds each family
            try:
                sock.bind(address)
            except OSError as exc:
                return _bind_error(exc, where, port)
    return None


def _bind_error(exc: OSError, where: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} is already in use ({where}: another pixelmill or another server is "
                f"listening there): stop it, or choose a free port with --port (or PIXELMILL_PORT)")
    if exc.errno == errno.EACCES:
        return f"no permission to listen on {where}: choose a port above 1023 with --port (or PIXELMILL_PORT)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no network interface of this machine has that address; check --host"
    return f"cannot listen on {where}: {exc.strerror or exc}; check --host and --port"


def explicit_model_failure(model: str, hub: bool, reason: str) -> str:
    """The one line ``serve`` ends with when ``--model`` could not be loaded."""
    from pixelmill.engine.load_errors import load_failure_cause

    if hub:  # the usual causes (not cached and offline, gated, no memory) said in words
        cause = load_failure_cause(reason)
        fix = f"download it while online (hf download {model}) or name a local checkpoint"
    else:  # a local file or folder: the loader's own message names what is wrong with it
        cause = f"could not be loaded ({' '.join(reason.split())[:400].rstrip(' .;:')})"
        fix = ("check that it is a complete SDXL, FLUX.1 or SD 3.5 checkpoint (a diffusers folder, or one "
               ".safetensors file; a FLUX.1 or SD 3.5 transformer file needs its <name>.base folder)")
    return (f"--model / PIXELMILL_MODEL {model!r} {cause}: {fix}, "
            "or start without --model to serve the default model (the SDXL base when it is cached, "
            "else the random-weight demo model)")


@dataclass
class _Watch:
    """What the backend watcher found: the first failed backend's error, if any."""

    error: str | None = None


def _watch_backends(server, backends: list, watch: _Watch) -> None:
    """Until every backend is ready: on the first failure, record it and stop the server."""
    from pixelmill.core.backend import BackendState

    while not server.should_exit:
        states = [backend.state for backend in backends]
        failed = next((b for b, state in zip(backends, states) if state is BackendState.failed), None)
        if failed is not None:
            watch.error = getattr(failed, "error", None) or "unknown error"
            server.should_exit = True  # uvicorn's main loop checks this every 0.1 s
            return
        if all(state is BackendState.ready for state in states):
            return
        time.sleep(WATCH_INTERVAL_S)


def run_server(settings: Settings, *, log_level: str, hub_model: bool, console: Console) -> int:
    """Serve until stopped; the exit status (1: the ``--model`` named did not load).

    Like ``uvicorn.run`` (which it replaces to keep a handle on the server), but with a
    watcher thread for an explicitly named model.
    """
    import uvicorn

    from pixelmill.server import build_app

    app = build_app(settings)
    # timeout_graceful_shutdown: on SIGTERM, requests still open after it are ended (503, see api.middleware).
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        # JSON logs: no uvicorn handlers of its own; its records go through the root (JSON) handler.
        **({"log_config": None} if settings.log_format == "json" else {})))
    watch = _Watch()
    backends = list(app.state.services.backends)
    if settings.model and backends:
        threading.Thread(target=_watch_backends, args=(server, backends, watch),
                         name="pixelmill-model-watch", daemon=True).start()
    server.run()
    if watch.error is not None:
        console.print(f"[red]error:[/] {explicit_model_failure(settings.model or '', hub_model, watch.error)}",
                      soft_wrap=True, highlight=False)
        return 1
    return 0 if server.started else STARTUP_FAILURE

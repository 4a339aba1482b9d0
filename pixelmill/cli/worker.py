"""``pixelmill worker``: a process that claims jobs from the store and runs them.

Needs only the job store URL and the models: no HTTP server, no shared filesystem
(with PostgreSQL, results go into the database where any API host serves them).
SIGTERM or Ctrl-C: stop claiming and finish the running job; a second one releases
the running job back to the queue at its next step and exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from pixelmill.jobs.supervisor import WorkerState
from pixelmill.server import build_services
from pixelmill.settings import Settings

log = logging.getLogger("pixelmill.worker")


async def run_worker_process(settings: Settings) -> int:
    """Run one worker until a signal stops it; the process exit status (1: the model failed).

    A worker whose model cannot load has nothing to do: it exits non-zero, so a process
    supervisor (systemd, Kubernetes) shows the failure instead of a healthy idle process.
    """
    services = build_services(settings, workers=1)
    backend, worker = services.backends[0], services.workers[0]
    backend.start()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("worker %s: stopping after the running job (signal again to release it now)", worker.id)
            worker.stop()
        else:
            worker.abort()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await worker.run()
    finally:
        await services.events.drain(timeout=5)
        backend.shutdown()
    if worker.health.state is WorkerState.failed:
        log.error("worker %s: cannot run: %s", worker.id, worker.health.reason)
        return 1
    return 0

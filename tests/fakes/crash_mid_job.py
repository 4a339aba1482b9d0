"""A worker whose engine kills its own process as soon as it runs a job.

Simulates a request that crashes the engine every time (a segfault, the kernel's
OOM killer): the real worker claims the job, then the process dies without a word.
Run as ``python -m tests.fakes.crash_mid_job``; configure with ``PIXELMILL_*``.
(The in-process crash, an exception, is :mod:`tests.support.backends.crash_mid_job`.)
"""

from __future__ import annotations

import asyncio
import os

from pixelmill.services import build_services
from pixelmill.settings import load_settings
from tests.support.backends.base import FakeBackend


class KillsItsProcess(FakeBackend):
    """Ready at once (no model needed); the first step of any job ends the process."""

    def on_step(self, step: int, total: int) -> None:
        os._exit(137)  # what SIGKILL looks like to the parent: no cleanup, no goodbye


async def main() -> None:
    services = build_services(load_settings(), workers=1, backend_factory=lambda _s, _r: KillsItsProcess())
    services.backends[0].start()
    await services.workers[0].run()


if __name__ == "__main__":
    asyncio.run(main())

"""A worker whose engine kills its own process as soon as it runs a job.

Simulates a request that crashes the engine every time (a segfault, the kernel's
OOM killer): the real worker claims the job, then the process dies without a word.
Run as ``python -m tests.fakes.crash_mid_job``; configure with ``PIXELMILL_*``.
"""

from __future__ import annotations

import asyncio
import os

from pixelmill.engine.runner import EngineState
from pixelmill.services import build_services
from pixelmill.settings import load_settings


def _crash(requests, report, token):
    os._exit(137)  # what SIGKILL looks like to the parent: no cleanup, no goodbye


async def main() -> None:
    services = build_services(load_settings(), workers=1)
    runner = services.runners[0]
    runner.state = EngineState.ready  # no model needed: the fake never gets that far
    runner._run = _crash
    await services.workers[0].run()


if __name__ == "__main__":
    asyncio.run(main())

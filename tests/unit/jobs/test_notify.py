"""In-process wake-ups: who is woken by a status change and who by progress."""

from __future__ import annotations

import asyncio

from pixelmill.jobs.notify import Notifier


async def _woken(notifier: Notifier, signal: str, *, progress: bool) -> bool:
    """Whether a waiter (wanting progress or not) returns before its timeout after ``signal``."""
    waiter = asyncio.ensure_future(notifier.wait_job("job-1", timeout=5, progress=progress))
    await asyncio.sleep(0)  # let it register
    getattr(notifier, signal)("job-1")
    done, _ = await asyncio.wait({waiter}, timeout=0.5)
    waiter.cancel()
    return bool(done)


def test_status_changes_wake_every_waiter():
    notifier = Notifier()
    assert asyncio.run(_woken(notifier, "job_changed", progress=False))
    assert asyncio.run(_woken(notifier, "job_changed", progress=True))


def test_progress_wakes_only_waiters_that_want_it():
    notifier = Notifier()
    assert asyncio.run(_woken(notifier, "job_progressed", progress=True))
    assert not asyncio.run(_woken(notifier, "job_progressed", progress=False))


def test_waiters_are_forgotten_once_they_return():
    notifier = Notifier()

    async def scenario() -> None:
        await notifier.wait_job("job-1", timeout=0.01)
        await asyncio.wait_for(notifier.wait_job("job-2", timeout=0.01, progress=False), 1)

    asyncio.run(scenario())
    assert notifier._job_waiters == {}

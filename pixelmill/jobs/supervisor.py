"""Keeps a worker serving: its health, and a restart with backoff after a fault.

A fault is an exception the worker loop did not expect and that is not a job's own
failure: the result directory or the database became unwritable, a bug. Such a fault
used to end the worker task silently while ``/health`` kept saying ready. Now:

* the batch it hit is put back in the queue with its attempt counted (code
  ``storage_error``): the fault is the worker's, not the jobs', so they run again once
  storage works, and fail for good only after ``max_attempts`` faults (see
  :mod:`pixelmill.jobs.worker`);
* the worker is :attr:`WorkerState.degraded` with the reason: ``/health`` answers 503
  ``degraded`` and submissions are refused with 503 while no worker can run;
* it checks again after 0.5 s, 1 s, 2 s … (capped at the lease), claiming nothing
  meanwhile, and serves again as soon as the check passes. The backoff starts over once a batch completes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pixelmill.jobs.notify import wait_event

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
"""First wait after a fault before the worker checks whether it can serve again."""


class WorkerState(str, enum.Enum):
    """Where a worker is: waiting for its backend, serving, faulted, or not running."""

    starting = "starting"
    ready = "ready"
    degraded = "degraded"
    failed = "failed"
    stopped = "stopped"


@dataclass
class WorkerHealth:
    """A worker's state and, when it cannot serve, why (read by ``/health`` and submit)."""

    state: WorkerState = WorkerState.starting
    reason: str | None = None

    def set(self, state: WorkerState, reason: str | None = None) -> None:
        """Move to ``state``; a reason only accompanies ``degraded`` and ``failed``."""
        self.state, self.reason = state, reason


class Backoff:
    """Exponential delays: ``initial``, twice that, … never more than ``cap`` seconds."""

    def __init__(self, initial: float = BACKOFF_INITIAL_S, cap: float = 30.0):
        self.initial, self.cap = initial, max(cap, initial)
        self._next = self.initial

    def next(self) -> float:
        """The delay to wait now; the one after is twice as long (capped)."""
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay

    @property
    def upcoming(self) -> float:
        """The delay :meth:`next` will return."""
        return self._next

    def reset(self) -> None:
        """Start over at ``initial`` (the worker proved it can serve)."""
        self._next = self.initial


class WorkerFault(Exception):
    """A fault the worker understood: its message is the reason ``/health`` shows."""


def describe_fault(exc: BaseException, context: str) -> str:
    """A short reason for ``exc``, safe for ``/health``: the error kind, never a path.

    A :class:`WorkerFault` is its own reason; anything else is ``context: kind``.
    """
    if isinstance(exc, WorkerFault):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        # str(OSError) names the file; the operator's log has it, a public endpoint must not.
        return f"{context}: {type(exc).__name__} ({exc.strerror})"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{context}: {type(exc).__name__}: {text}" if text else f"{context}: {type(exc).__name__}"


async def supervise(
    name: str,
    serve: Callable[[], Awaitable[None]],
    check: Callable[[], Awaitable[None]],
    health: WorkerHealth,
    stopping: asyncio.Event,
    backoff: Backoff,
) -> None:
    """Run ``serve`` until it returns; after a fault, wait and ``check`` until it passes, then serve again.

    ``serve`` sets ``health`` itself while it runs; a fault sets it ``degraded``. Returns
    when ``serve`` returns or ``stopping`` is set.
    """
    while not stopping.is_set():
        try:
            await serve()
            return
        except Exception as exc:
            health.set(WorkerState.degraded, describe_fault(exc, "the worker loop failed"))
            log.exception("worker %s: fault (%s); checking again with backoff", name, health.reason)
        if not await _recover(name, check, health, stopping, backoff):
            return


async def _recover(
    name: str, check: Callable[[], Awaitable[None]], health: WorkerHealth, stopping: asyncio.Event,
    backoff: Backoff,
) -> bool:
    """Wait and check until the check passes (True) or the worker is stopping (False)."""
    while True:
        delay = backoff.next()
        if await wait_event(stopping, delay):
            return False
        try:
            await check()
        except Exception as exc:
            health.set(WorkerState.degraded, describe_fault(exc, "the worker cannot run jobs"))
            log.warning("worker %s: still degraded (%s); next check in %.1f s",
                        name, health.reason, backoff.upcoming)
            continue
        log.info("worker %s: the check passed after %s; serving again", name, health.reason)
        return True


async def stop_within(task: asyncio.Task, grace_s: float, *, stop: Callable[[], None],
                      abort: Callable[[], None]) -> None:
    """A worker's graceful stop: ``stop`` taking work, give its ``task`` ``grace_s`` seconds
    to finish what it holds, then ``abort`` (what it holds goes back to the queue) and wait."""
    stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), grace_s)
    except TimeoutError:
        abort()
        await task

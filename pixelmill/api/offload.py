"""One bounded thread pool for the API's CPU work: decoding, checking and re-encoding images.

The event loop answers every client (``/health`` included), so it must never spend a
second decoding one client's 16-megapixel upload. That work runs here instead: a pool
shared by all requests and sized by ``--intake-threads``, so many large uploads queue
for a few threads rather than take every core from the workers and the loop.

The API middleware makes its pool the current one for each request; :func:`run_cpu`
uses it (outside a request, e.g. in a unit test, the loop's default executor).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_current: contextvars.ContextVar["CpuPool | None"] = contextvars.ContextVar("pixelmill_cpu_pool", default=None)


def auto_threads() -> int:
    """The default pool size: half the CPU cores, at least 1 and at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class CpuPool:
    """A lazily started thread pool of ``threads`` threads (0 = :func:`auto_threads`)."""

    def __init__(self, threads: int = 0):
        self.threads = threads or auto_threads()
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> ThreadPoolExecutor:
        """The pool's executor, started on first use (and again after :meth:`shutdown`)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="pixelmill-cpu")
            return self._executor

    def shutdown(self) -> None:
        """Stop the threads; work not started yet is dropped (its callers have gone)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def using(pool: CpuPool) -> Iterator[None]:
    """Make ``pool`` the one :func:`run_cpu` uses, here and in the tasks started inside."""
    token = _current.set(pool)
    try:
        yield
    finally:
        _current.reset(token)


async def run_cpu(fn: Callable[..., T], /, *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` in the current pool, with the caller's context variables.

    The context travels along because the request's pixel budget lives there. A caller
    that is cancelled (its client hung up) drops work that has not started yet.
    """
    pool = _current.get()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool.executor() if pool else None, call)

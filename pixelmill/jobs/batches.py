"""A running batch as the worker sees it, and the batch sizes it learned from running out
of device memory.

:class:`Batch` holds the jobs of one pipeline call and what the heartbeat and the engine
share (progress, previews, the cancel token); :class:`BatchCaps` remembers, per batch key,
the most jobs one batch of that key may hold after a batch of it ran out of memory.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from pixelmill.core.backend import CancelToken
from pixelmill.core.batching import batch_key
from pixelmill.core.types import JobRecord, Progress
from pixelmill.jobs.previews import PreviewBuffer

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One job of a running batch: what its heartbeats learned."""

    job: JobRecord
    cancel_requested: bool = False
    lease_lost: bool = False

    @property
    def active(self) -> bool:
        """Whether the job still wants its images from this attempt."""
        return not (self.cancel_requested or self.lease_lost)


@dataclass
class Batch:
    """Jobs sharing one pipeline call, and what the heartbeat and the engine share."""

    runs: list[Run]
    token: CancelToken = field(default_factory=CancelToken)
    progress: tuple[int, int] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    previews: PreviewBuffer = field(default_factory=PreviewBuffer)  # stored by the heartbeat

    def on_progress(self, progress: Progress, runs: list[Run] | None = None) -> None:
        """Record the engine's progress (and previews) for the heartbeat to store."""
        runs = self.runs if runs is None else runs  # previews are indexed by the call's requests
        self.progress = (progress.step, progress.total)
        for index, data in progress.previews.items():
            if 0 <= index < len(runs):
                self.previews.offer(runs[index].job.id, progress.step, data)
        self.changed.set()

    def progress_for(self, runs: list[Run]):
        """The progress callback of a call running ``runs`` (the whole batch, or a part of it)."""
        return self.on_progress if runs is self.runs else lambda progress: self.on_progress(progress, runs)


class BatchCaps:
    """Most jobs per batch, per batch key: ``max_batch_size`` until a batch of that key runs
    out of device memory, then half the size that failed (lowered again if a half fails)."""

    def __init__(self, max_batch_size: int):
        self.max_batch_size = max_batch_size
        self._caps: dict[object, int] = {}  # batch key → most jobs per batch

    @property
    def learned(self) -> bool:
        """Whether any key has a cap below ``max_batch_size`` (then a claim must look at the
        head job's key before taking company)."""
        return bool(self._caps)

    def cap(self, request) -> int:
        """Most jobs in one batch of ``request``'s batch key."""
        return min(self.max_batch_size, self._caps.get(batch_key(request), self.max_batch_size))

    def split(self, runs: list[Run]) -> tuple[list[Run], list[Run]] | None:
        """The halves to run, one after the other, after ``runs`` ran out of device memory
        together, and the lower cap for their key; None for a single job (it is retried as
        it is, within ``max_attempts``)."""
        if len(runs) < 2:
            return None
        key, size = batch_key(runs[0].job.request), len(runs) // 2
        if size < self._caps.get(key, self.max_batch_size):
            self._caps[key] = size
            log.warning("jobs %s ran out of device memory together; batches of this shape are "
                        "now capped at %d job(s)", [run.job.id for run in runs], size)
        return runs[:size], runs[size:]

"""The latest live preview of each running job, in the job store (``job_previews``).

A worker's backend reports previews with its progress
(:attr:`~pixelmill.core.types.Progress.previews`); the worker keeps the newest one per
job in a :class:`PreviewBuffer` and writes it with the next heartbeat, in the same
transaction (no extra commit), at most once per :data:`WRITE_GAP_S` per job. The write
is guarded like every worker write (this worker, this attempt, still running), and
the row goes when the job leaves ``running`` (completed, failed, canceled, requeued,
reaped). Readers on any host see it through :func:`read_preview`, which also ignores a
row of an earlier attempt.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from pixelmill.core.types import JobStatus
from pixelmill.db.engine import read_transaction
from pixelmill.db.tables import job_previews, jobs, utc_now

WRITE_GAP_S = 1.0
"""Least time between two stored previews of one job."""
MAX_PREVIEW_BYTES = 512 * 1024
"""A preview larger than this is not stored (a small JPEG is a few KB)."""
_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))


def media_type_of(data: bytes) -> str | None:
    """``image/jpeg`` or ``image/png`` from the bytes' signature; None for anything else."""
    return next((media for signature, media in _SIGNATURES if data.startswith(signature)), None)


@dataclass(frozen=True)
class LivePreview:
    """A stored preview: made by ``attempt`` of the job after ``step`` steps."""

    attempt: int
    step: int
    media_type: str
    data: bytes

    def data_url(self) -> str:
        """The image as a ``data:`` URL, ready for an ``<img src>``."""
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode()}"


class PreviewBuffer:
    """The newest unsaved preview of each job of a running batch, released at most once
    per ``gap_s`` per job (the worker's heartbeat takes them)."""

    def __init__(self, gap_s: float = WRITE_GAP_S, clock: Callable[[], float] = time.monotonic):
        self.gap_s, self.clock = gap_s, clock
        self._pending: dict[str, tuple[int, bytes]] = {}
        self._written: dict[str, float] = {}

    def offer(self, job_id: str, step: int, data: bytes) -> None:
        """Keep ``data`` as the job's newest preview (replacing an unsaved older one);
        bytes that are not a JPEG or PNG, or over :data:`MAX_PREVIEW_BYTES`, are dropped."""
        if media_type_of(data) is not None and len(data) <= MAX_PREVIEW_BYTES:
            self._pending[job_id] = (step, data)

    def take(self, job_ids: Iterable[str]) -> dict[str, tuple[int, bytes]]:
        """The pending previews of ``job_ids`` whose last write is ``gap_s`` old, as
        ``{job id: (step, bytes)}``; they count as written now."""
        now, due = self.clock(), {}
        for job_id in job_ids:
            if job_id in self._pending and now - self._written.get(job_id, float("-inf")) >= self.gap_s:
                due[job_id] = self._pending.pop(job_id)
                self._written[job_id] = now
        return due


def put_preview(conn: sa.Connection, job_id: str, attempt: int, step: int, data: bytes) -> None:
    """Store (or overwrite) the job's preview; the caller has checked the job's lease in
    this transaction, which also holds the job's row lock against other writers."""
    media_type = media_type_of(data) or "application/octet-stream"
    values = {"attempt": attempt, "step": step, "media_type": media_type, "data": data,
              "updated_at": utc_now()}
    updated = conn.execute(sa.update(job_previews).where(job_previews.c.job_id == job_id).values(values))
    if updated.rowcount == 0:
        conn.execute(sa.insert(job_previews).values(job_id=job_id, **values))


def clear_previews(conn: sa.Connection, job_ids: Iterable[str]) -> None:
    """Delete the previews of jobs that leave ``running`` (in the caller's transaction)."""
    ids = list(job_ids)
    if ids:
        conn.execute(sa.delete(job_previews).where(job_previews.c.job_id.in_(ids)))


def read_preview(engine: sa.Engine, job_id: str) -> LivePreview | None:
    """The latest preview of ``job_id`` while it runs (this attempt's); None otherwise."""
    p = job_previews.c
    stmt = (sa.select(p.attempt, p.step, p.media_type, p.data)
            .join(jobs, jobs.c.id == p.job_id)
            .where(p.job_id == job_id, jobs.c.status == JobStatus.running.value, jobs.c.attempt == p.attempt))
    with read_transaction(engine) as conn:
        row = conn.execute(stmt).first()
    return None if row is None else LivePreview(row.attempt, row.step, row.media_type, bytes(row.data))

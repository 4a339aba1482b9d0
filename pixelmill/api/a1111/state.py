"""Per-caller A1111 state: options, task ids, and progress read from the caller's jobs.

A1111 keeps one global state (one model, one progress bar, one interrupt flag) for every
client. pixelmill keeps it per caller, the caller being its API key (everyone together
when the server runs without keys): ``POST /options`` with ``sd_model_checkpoint``
chooses that caller's default model only, and ``progress``/``interrupt`` see that
caller's jobs only. Progress comes from the job store (so it covers jobs running on any
worker); options and ``force_task_id`` names live in this process (a restart resets a
caller's options to the server's defaults).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from pixelmill.api.recent import RecentMap
from pixelmill.auth.keys import Principal
from pixelmill.core.types import JobRecord, JobStatus
from pixelmill.jobs.store import MAX_PAGE

MAX_TASKS = 10_000
"""Task ids remembered for ``/internal/progress`` (oldest forgotten first)."""
MAX_CALLERS = 10_000


def caller_of(who: Principal) -> str:
    """The key that scopes a caller's A1111 state ("" for everyone when keys are off)."""
    return who.key_id or ""


class A1111State:
    """Options per caller, and which job each ``force_task_id`` became."""

    def __init__(self) -> None:
        self._options: RecentMap[str, dict[str, Any]] = RecentMap(MAX_CALLERS)
        self._tasks: RecentMap[tuple[str, str], str] = RecentMap(MAX_TASKS)

    def options(self, caller: str) -> dict[str, Any]:
        """A copy of the options ``caller`` has set."""
        return dict(self._options.get(caller, {}))

    def set_options(self, caller: str, values: dict[str, Any]) -> None:
        """Merge ``values`` into ``caller``'s options (already validated)."""
        self._options.put(caller, self._options.get(caller, {}) | values)

    def remember_task(self, caller: str, task_id: str, job_id: str) -> None:
        """``task_id`` (a client's ``force_task_id``) names ``job_id`` for ``caller``."""
        self._tasks.put((caller, task_id), job_id)

    def job_of_task(self, caller: str, task_id: str) -> str | None:
        return self._tasks.get((caller, task_id))


async def active_jobs(store, who: Principal) -> tuple[list[JobRecord], list[JobRecord]]:
    """(running, queued) jobs of ``who``'s key (everyone's when keys are off), oldest first."""
    def query(status: JobStatus) -> list[JobRecord]:
        jobs, _ = store.list_jobs(status=status, limit=MAX_PAGE, api_key_id=who.key_id)
        return list(reversed(jobs))

    return await asyncio.to_thread(query, JobStatus.running), await asyncio.to_thread(query, JobStatus.queued)


def fraction(job: JobRecord) -> float:
    """How far a job is, 0 to 1, from its denoising steps."""
    if job.status.terminal:
        return 1.0
    if not job.progress_total:
        return 0.0
    return min(1.0, job.progress_step / job.progress_total)


def eta_s(job: JobRecord, done: float) -> float:
    """Seconds a job has left, extrapolated from its time so far (0 when it has not started)."""
    if job.started_at is None or done <= 0:
        return 0.0
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=timezone.utc)
    elapsed = (datetime.now(timezone.utc) - started).total_seconds()
    return max(0.0, elapsed / done - elapsed)


def progress_body(running: list[JobRecord], queued: list[JobRecord]) -> dict[str, Any]:
    """``GET /sdapi/v1/progress`` for these jobs (idle: progress 0, job_count 0)."""
    count = len(running) + len(queued)
    state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
             "job_count": count, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    if not count:
        return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None,
                "current_task": None}
    current = running[0] if running else queued[0]
    done = fraction(current)
    started = current.started_at or current.created_at
    state |= {"job": current.id, "job_timestamp": started.strftime("%Y%m%d%H%M%S"),
              "sampling_step": current.progress_step, "sampling_steps": current.progress_total}
    # Never 0 while something is queued or running: clients read progress 0 + job_count 0 as idle.
    return {"progress": max(0.01, done), "eta_relative": eta_s(current, done), "state": state,
            "current_image": None, "textinfo": None, "current_task": current.id}


def internal_progress(job: JobRecord | None, id_live_preview: int) -> dict[str, Any]:
    """``POST /internal/progress`` for the job a task id names (None: unknown or forgotten)."""
    if job is None:
        return {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
                "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}
    queued = job.status is JobStatus.queued
    active = job.status is JobStatus.running
    done = fraction(job)
    return {"active": active, "queued": queued, "completed": job.status.terminal,
            "progress": done if active else None, "eta": eta_s(job, done) if active else None,
            "live_preview": None, "id_live_preview": id_live_preview,
            "textinfo": "In queue..." if queued else None}

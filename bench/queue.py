"""Queue overhead: how long a job waits before an idle worker starts it.

Each job is submitted to an idle server (the previous job finished and a pause let the
worker go back to waiting), then its SSE stream is followed to the end. Three views of
the same wait, all on this machine's one clock:

* ``returned → started_at``: from ``POST /v1/jobs`` returning to the ``started_at`` the
  worker stored when it claimed the job (the target's definition). Can be slightly
  negative: the worker may claim the job before the HTTP response reaches the client.
* ``created_at → started_at``: the same wait seen by the server alone.
* ``returned → SSE started``: when a client following the job *learns* it started;
  includes the batch-fill wait (``--max-batch-wait-ms``), the SSE connection and a
  store read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from bench.inprocess import prompt
from bench.load import REQUEST_TIMEOUT_S, BenchError, follow_events, submit_job

IDLE_GAP_S = 0.25
"""Pause between jobs, so every submission finds the worker idle (waiting for work)."""


@dataclass
class QueueRun:
    """Per-job waits in seconds for one job store."""

    store: str
    returned_to_started: list[float] = field(default_factory=list)
    created_to_started: list[float] = field(default_factory=list)
    returned_to_sse_started: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    skipped: str | None = None


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def _one(client: httpx.AsyncClient, base: str, body: dict, headers: dict, run: QueueRun) -> None:
    sent = time.perf_counter()
    job = await submit_job(client, base, body, headers)
    returned_wall, returned = time.time(), time.perf_counter()
    seen_started: list[float] = []

    def on_event(event: str) -> None:
        if event == "started" and not seen_started:
            seen_started.append(time.perf_counter() - returned)

    done = await follow_events(client, base, job["id"], headers, on_event=on_event)
    if done["event"] != "succeeded" or not done.get("started_at"):
        raise BenchError(f"queue probe job {job['id']} ended {done['event']}")
    started = _ts(done["started_at"])
    run.submit_s.append(returned - sent)
    run.returned_to_started.append(started - returned_wall)
    run.created_to_started.append(started - _ts(done["created_at"]))
    if seen_started:  # a job may finish between two looks; then no "started" event is sent
        run.returned_to_sse_started.append(seen_started[0])


async def _measure(base: str, headers: dict, jobs: int, size: int, steps: int, store: str) -> QueueRun:
    run = QueueRun(store)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        for i in range(jobs + 1):
            await asyncio.sleep(IDLE_GAP_S)
            body = {"prompt": prompt(50_000 + i), "seed": 50_000 + i, "steps": steps, "width": size, "height": size}
            probe = run if i else QueueRun(store)  # the first job warms connections: not counted
            await _one(client, base, body, headers, probe)
    return run


def measure_queue(base: str, headers: dict, *, jobs: int, size: int, steps: int, store: str) -> QueueRun:
    """Submit ``jobs`` jobs one at a time to an idle server and collect their waits."""
    return asyncio.run(_measure(base, headers, jobs, size, steps, store))

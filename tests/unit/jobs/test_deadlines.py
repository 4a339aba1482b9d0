"""Cancel deadlines are stored with the job: ``JobStore.overdue`` finds the unfinished ones past it."""

from __future__ import annotations

from datetime import timedelta

from pixelmill.core.types import GenerationRequest, JobStatus
from pixelmill.db import tables as t

REQUEST = GenerationRequest(prompt="deadline", width=64, height=64, steps=2, seed=1)


def test_overdue_lists_unfinished_jobs_past_their_deadline_only(store):
    later = t.utc_now() + timedelta(seconds=5)
    due, _ = store.submit(REQUEST, cancel_after_s=1)
    running, _ = store.submit(REQUEST, cancel_after_s=2)
    store.claim("w", lease_s=30, limit=1)  # `due` (oldest) is running now; `running` stays queued
    not_yet, _ = store.submit(REQUEST, cancel_after_s=3600)
    never, _ = store.submit(REQUEST)
    assert due.cancel_at is not None and never.cancel_at is None
    assert store.overdue() == []
    assert store.overdue(now=later) == [due.id, running.id]  # oldest deadline first

    store.cancel(running.id)  # queued: canceled at once, so no longer overdue
    assert store.overdue(now=later) == [due.id]
    store.cancel(due.id)  # running: cancel requested, the worker stops it; asked once is enough
    assert store.get(due.id).status is JobStatus.running
    assert store.overdue(now=later) == []
    assert not_yet.id not in store.overdue(now=later + timedelta(seconds=60))

"""The job store as ``/metrics`` reads it: jobs by status, and the queue per model.

Read at scrape time, so the figures are true for every process sharing the store (API
hosts, separate workers). Two grouped queries: jobs by status (answered from the
``(status, …)`` indexes) and, for queued jobs only, count and oldest ``created_at`` per model.
"""

from __future__ import annotations

import sqlalchemy as sa

from pixelmill.core.types import JobStatus
from pixelmill.db.tables import jobs, utc, utc_now
from pixelmill.jobs.store import JobStore
from pixelmill.observe.metrics import DEFAULT_MODEL_LABEL, QueueSnapshot


def queue_snapshot(store: JobStore) -> QueueSnapshot:
    """Jobs by status and the queued jobs per model (``default`` for jobs naming none). Blocking."""
    with store.engine.connect() as conn:
        by_status = dict(conn.execute(
            sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all())
        queued = conn.execute(
            sa.select(jobs.c.model, sa.func.count(), sa.func.min(jobs.c.created_at))
            .where(jobs.c.status == JobStatus.queued.value).group_by(jobs.c.model)
        ).all()
    now = utc_now()
    depth: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for model, count, first in queued:
        label = model or DEFAULT_MODEL_LABEL
        depth[label] = depth.get(label, 0) + count
        age = (now - utc(first)).total_seconds() if first is not None else 0.0
        oldest[label] = max(oldest.get(label, 0.0), age)
    return QueueSnapshot(jobs_by_status=by_status, queued_by_model=depth, oldest_queued_age_s=oldest)

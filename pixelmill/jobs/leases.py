"""The worker side of the job store: claiming jobs, holding leases, guarded transitions.

Mixed into :class:`~pixelmill.jobs.store.JobStore` (see its docstring for the two rules
every write here keeps). Claims are race-free: PostgreSQL takes candidates with
``SELECT … FOR UPDATE SKIP LOCKED`` and the UPDATE re-checks ``status = 'queued'``; on
SQLite every write transaction starts with ``BEGIN IMMEDIATE``, so claimers take turns.
Same statements for both: SQLAlchemy renders no ``FOR UPDATE`` for SQLite.

Every write a worker makes to a job it runs is guarded by ``(job_id, worker, attempt,
status=running)`` in the UPDATE's WHERE clause, so a late answer from a stale attempt
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import sqlalchemy as sa

from pixelmill.domain import GenerationRequest, JobRecord, JobStatus
from pixelmill.errors import PixelmillError
from pixelmill.jobs import tables as t
from pixelmill.jobs.db import write_transaction
from pixelmill.jobs.tables import jobs

CLAIM_SCAN_WINDOW = 64
"""How many queued jobs past the oldest a batching claim looks at for compatible ones."""

QUEUED, RUNNING = JobStatus.queued.value, JobStatus.running.value
BatchKey = Callable[[GenerationRequest], Hashable]
Compatible = Callable[[GenerationRequest, GenerationRequest], bool]


class LeaseLost(PixelmillError):
    """The job is no longer running under this worker and attempt; stop working on it."""

    code = "lease_lost"


class Guard(NamedTuple):
    """Who may write to a running job: this job, run by this worker, in this attempt."""

    job_id: str
    worker: str
    attempt: int


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _guard(job_id: str, worker: str, attempt: int) -> tuple[sa.ColumnElement[bool], ...]:
    """The WHERE clause of every worker write: this job, this worker, this attempt, running."""
    return (jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.attempt == attempt, jobs.c.status == RUNNING)


class WorkerLeases:
    """Claims, heartbeats, results and reaping; needs ``self.engine`` (a SQLAlchemy engine)."""

    engine: sa.Engine

    # ---- claiming ----------------------------------------------------------------------------

    def claim(
        self, worker: str, *, lease_s: float, limit: int = 1, compatible_with: Compatible | None = None,
        batch_key: BatchKey | None = None,
    ) -> list[JobRecord]:
        """Atomically take up to ``limit`` queued jobs in claim order and start them.

        Without ``batch_key``/``compatible_with`` the first ``limit`` queued jobs are
        taken. With either, the oldest job is taken plus up to ``limit - 1`` of the next
        :data:`CLAIM_SCAN_WINDOW` queued jobs whose ``batch_key`` equals the oldest one's
        and for which ``compatible_with(oldest_request, request)`` holds.
        """
        if lease_s <= 0 or limit < 1:
            raise ValueError("claim needs lease_s > 0 and limit >= 1")
        batching = batch_key is not None or compatible_with is not None
        queued = sa.select(jobs.c.id, jobs.c.request).where(jobs.c.status == QUEUED).order_by(*t.CLAIM_ORDER)
        with write_transaction(self.engine) as conn:
            first = queued.limit(1 if batching else limit).with_for_update(skip_locked=True)
            picked = conn.execute(first).all()
            if picked and batching and limit > 1:
                picked += self._compatible(conn, queued, picked[0], limit - 1, batch_key, compatible_with)
            return self._start(conn, [row.id for row in picked], worker, lease_s)

    def claim_matching(self, worker: str, *, lease_s: float, limit: int, batch_key: BatchKey, key: Hashable) -> list[JobRecord]:
        """Take up to ``limit`` queued jobs whose ``batch_key`` is ``key``: company for a batch.

        Used while a worker waits a few milliseconds to fill a batch it has started; the
        oldest queued job of another key is left for the next claim (it is then the head).
        """
        if lease_s <= 0 or limit < 1:
            raise ValueError("claim_matching needs lease_s > 0 and limit >= 1")
        queued = sa.select(jobs.c.id, jobs.c.request).where(jobs.c.status == QUEUED).order_by(*t.CLAIM_ORDER)
        with write_transaction(self.engine) as conn:
            window = conn.execute(queued.limit(CLAIM_SCAN_WINDOW)).all()
            chosen = [row.id for row in window if batch_key(GenerationRequest.model_validate_json(row.request)) == key]
            locked = sa.select(jobs.c.id).where(jobs.c.id.in_(chosen[:limit]), jobs.c.status == QUEUED)
            ids = {row.id for row in conn.execute(locked.with_for_update(skip_locked=True))}
            return self._start(conn, [job_id for job_id in chosen if job_id in ids], worker, lease_s)

    @staticmethod
    def _start(conn: sa.Connection, ids: list[str], worker: str, lease_s: float) -> list[JobRecord]:
        """Mark the (locked, queued) jobs ``ids`` running under ``worker``; claim order kept."""
        if not ids:
            return []
        stmt = sa.update(jobs).where(jobs.c.id.in_(ids), jobs.c.status == QUEUED)
        stmt = stmt.values(t.claimed(worker, _now(), lease_s)).returning(*jobs.c)
        claimed = {row.id: t.job_record(row._mapping) for row in conn.execute(stmt)}
        return [claimed[job_id] for job_id in ids if job_id in claimed]

    def _compatible(self, conn: sa.Connection, queued: sa.Select, head: sa.Row, wanted: int,
                    batch_key: BatchKey | None, compatible_with: Compatible | None) -> list[sa.Row]:
        head_request = GenerationRequest.model_validate_json(head.request)
        head_key = batch_key(head_request) if batch_key else None
        chosen = []
        for row in conn.execute(queued.where(jobs.c.id != head.id).limit(CLAIM_SCAN_WINDOW)):
            request = GenerationRequest.model_validate_json(row.request)
            if batch_key is not None and batch_key(request) != head_key:
                continue
            if compatible_with is None or compatible_with(head_request, request):
                chosen.append(row.id)
            if len(chosen) == wanted:
                break
        # The window was read without locks; lock what we chose, skipping rows another
        # claimer holds, and keep claim order.
        locked = sa.select(jobs.c.id, jobs.c.request).where(jobs.c.id.in_(chosen), jobs.c.status == QUEUED)
        rows = {row.id: row for row in conn.execute(locked.with_for_update(skip_locked=True))}
        return [rows[job_id] for job_id in chosen if job_id in rows]

    # ---- heartbeats ----------------------------------------------------------------------------

    def heartbeat(
        self, job_id: str, worker: str, attempt: int, *, lease_s: float,
        progress: tuple[int, int] | None = None,
    ) -> bool:
        """Extend the lease (and store progress); returns whether cancellation was requested.

        Raises :class:`LeaseLost` when the job is no longer running under this worker+attempt.
        """
        held = self.heartbeat_many([Guard(job_id, worker, attempt)], lease_s=lease_s, progress=progress)
        if job_id not in held:
            raise LeaseLost(f"job {job_id} attempt {attempt} is no longer held by {worker!r}", param="job_id")
        return held[job_id]

    def heartbeat_many(
        self, guards: Sequence[Guard | tuple[str, str, int]], *, lease_s: float,
        progress: tuple[int, int] | None = None,
    ) -> dict[str, bool]:
        """:meth:`heartbeat` for the jobs of a batch in one transaction (one commit, one fsync).

        Returns ``{job_id: cancel_requested}`` for every job still held under its guard;
        a job missing from the answer has lost its lease and was not touched.
        """
        if not guards:
            return {}
        now = _now()
        values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_s), "heartbeat_at": now}
        if progress is not None:
            values["progress_step"], values["progress_total"] = progress
        # One UPDATE whose WHERE is the OR of each job's full guard: a stale attempt of
        # one job cannot be renewed by another job's guard.
        held = sa.or_(*(sa.and_(*_guard(*guard)) for guard in guards))
        stmt = sa.update(jobs).where(held).values(values).returning(jobs.c.id, jobs.c.cancel_requested)
        with write_transaction(self.engine) as conn:
            return {row.id: bool(row.cancel_requested) for row in conn.execute(stmt)}

    # ---- results and other guarded transitions -------------------------------------------------

    def _guarded_transition(
        self, job_id: str, worker: str, attempt: int, decide: Callable[[sa.Row], dict[str, Any]]
    ) -> bool:
        """Read the guarded row (locked), let ``decide`` pick the new values, write them."""
        locked = sa.select(jobs).where(*_guard(job_id, worker, attempt)).with_for_update()
        with write_transaction(self.engine) as conn:
            job = conn.execute(locked).first()
            if job is None:
                return False
            stmt = sa.update(jobs).where(*_guard(job_id, worker, attempt)).values(decide(job))
            return conn.execute(stmt).rowcount == 1

    def complete(
        self, job_id: str, worker: str, attempt: int, *, result_ids: list[str], seeds: list[int],
        gpu_seconds: float, sampler: str, width: int, height: int, model: str | None = None,
        control_ids: list[str] = (),
    ) -> bool:
        """running → succeeded; False (nothing changed) for a stale attempt.

        ``model``, if given, records the model that really ran (the request may say None).
        """
        ledger = {"gpu_seconds": gpu_seconds, "sampler": sampler, "width": width, "height": height}
        values = t.succeeded(_now(), result_ids, seeds, control_ids, **ledger, **({"model": model} if model else {}))
        # No read needed to decide: one guarded UPDATE (the WHERE re-checks everything).
        with write_transaction(self.engine) as conn:
            return conn.execute(sa.update(jobs).where(*_guard(job_id, worker, attempt)).values(values)).rowcount == 1

    def fail(
        self, job_id: str, worker: str, attempt: int, *, code: str, message: str, retry: bool = False
    ) -> bool:
        """running → failed, or back to queued when ``retry`` and attempts remain.

        A retryable failure of a job whose cancellation was requested ends it canceled.
        """
        def decide(job: sa.Row) -> dict[str, Any]:
            if retry and job.cancel_requested:
                return t.canceled(_now())
            if retry and job.attempt < job.max_attempts:
                return t.requeued(attempt)
            return t.failed(_now(), code, message)

        return self._guarded_transition(job_id, worker, attempt, decide)

    def mark_canceled(self, job_id: str, worker: str, attempt: int) -> bool:
        """running → canceled (results discarded); False for a stale attempt."""
        return self._guarded_transition(job_id, worker, attempt, lambda _job: t.canceled(_now()))

    def release(self, job_id: str, worker: str, attempt: int) -> bool:
        """Give a running job back to the queue (graceful shutdown) without using up an attempt."""
        # Nobody wants a job back in the queue whose cancellation was requested.
        return self._guarded_transition(
            job_id, worker, attempt,
            lambda job: t.canceled(_now()) if job.cancel_requested else t.requeued(attempt - 1),
        )

    # ---- maintenance ----------------------------------------------------------------------------

    def reap_expired(self, *, now: datetime | None = None) -> list[str]:
        """Requeue (attempts left) or fail (``worker_lost``) running jobs whose lease expired.

        A job whose cancellation was requested ends canceled. Returns the affected ids. Safe
        from every host at once: expired rows are locked (SKIP LOCKED on PostgreSQL, the
        write lock on SQLite) and each UPDATE re-checks the expired lease.
        """
        now = t.utc(now) if now is not None else _now()
        expired = (jobs.c.status == RUNNING, jobs.c.lease_expires_at < now)
        lost = f"the worker stopped renewing its lease (expired before {now.isoformat()})"
        steps = [
            (jobs.c.cancel_requested.is_(True), t.canceled(now)),
            (jobs.c.attempt < jobs.c.max_attempts, t.requeued(jobs.c.attempt)),
            (sa.true(), t.failed(now, "worker_lost", lost)),
        ]
        affected: list[str] = []
        with write_transaction(self.engine) as conn:
            candidates = sa.select(jobs.c.id).where(*expired).with_for_update(skip_locked=True)
            ids = list(conn.execute(candidates).scalars())
            for condition, values in steps if ids else ():
                stmt = sa.update(jobs).where(jobs.c.id.in_(ids), *expired, condition).values(values)
                affected += conn.execute(stmt.returning(jobs.c.id)).scalars()
        return affected

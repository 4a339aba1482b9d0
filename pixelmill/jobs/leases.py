"""The worker's half of the job store: claim queued jobs, hold them under a lease, end them.

Every write a worker makes is guarded by ``(job_id, worker, attempt, status=running)``
in the UPDATE's WHERE clause, so a late answer from a stale attempt changes nothing;
every status it sets is checked against :mod:`pixelmill.core.lifecycle`.

Claims are race-free: PostgreSQL takes candidates with ``SELECT … FOR UPDATE SKIP LOCKED``
and the UPDATE re-checks ``status = 'queued'``; on SQLite every write transaction starts
with ``BEGIN IMMEDIATE``, so claimers take turns. Same statements for both: SQLAlchemy
renders no ``FOR UPDATE`` for SQLite.

Claims never parse requests to batch them: the batch key was computed once at submit
and is a column. The input images of the jobs actually claimed are loaded last, so a
claim costs the same whatever the size of the images waiting in the queue.

Every claim takes the jobs of one *route*: ``"local"`` (the default, this fleet's
workers) or the name of an upstream backend (:mod:`pixelmill.gateway`), so a local worker
never takes a job meant for a hosted API and the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from pixelmill.core.batching import batch_key as default_batch_key
from pixelmill.core.types import GenerationRequest, JobRecord, JobStatus
from pixelmill.db import tables as t
from pixelmill.db.engine import write_transaction
from pixelmill.db.tables import jobs
from pixelmill.jobs.inputs import attach_inputs, input_ids, load_images
from pixelmill.jobs.previews import clear_previews, put_preview

CLAIM_SCAN_WINDOW = 64
"""How many queued jobs past the oldest a batching claim looks at for ones of the same key."""

QUEUED, RUNNING = JobStatus.queued, JobStatus.running
BatchKey = Callable[[GenerationRequest], Hashable]


@dataclass(frozen=True)
class Completion:
    """What a worker stores for one job that finished with results (see ``complete_batch``)."""

    job_id: str
    attempt: int
    result_ids: list[str]
    seeds: list[int]
    gpu_seconds: float
    sampler: str
    width: int
    height: int
    model: str | None = None
    control_ids: list[str] = field(default_factory=list)
    upstream_cost: float | None = None
    """What the upstream backend charged (gateway jobs); None for local work."""

    def values(self, now: datetime) -> dict[str, Any]:
        """The row's new values: succeeded, with results and ledger."""
        ledger = {"gpu_seconds": self.gpu_seconds, "sampler": self.sampler, "width": self.width,
                  "height": self.height, **({"model": self.model} if self.model else {})}
        if self.upstream_cost is not None:
            ledger["upstream_cost"] = self.upstream_cost
        return t.succeeded(now, self.result_ids, self.seeds, self.control_ids, **ledger)


def _guard(job_id: str, worker: str, attempt: int) -> tuple[sa.ColumnElement[bool], ...]:
    """The WHERE clause of every worker write: this job, this worker, this attempt, running."""
    return (jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.attempt == attempt,
            jobs.c.status == RUNNING.value)


class LeaseStore:
    """Claims, heartbeats, completions, failures and reaping (see module docstring).

    ``batch_key`` is the function whose value, computed when a job is submitted, decides
    which jobs may share a pipeline call.
    """

    def __init__(self, engine: sa.Engine, *, batch_key: BatchKey = default_batch_key):
        self.engine = engine
        self.batch_key = batch_key

    def _queued_window(self, route: str) -> sa.Select:
        # (status, route) equalities then claim order: the shape of ix_jobs_claim.
        queued = sa.select(jobs.c.id, jobs.c.batch_key).where(jobs.c.status == QUEUED.value, jobs.c.route == route)
        return queued.order_by(*t.CLAIM_ORDER)

    def _check_key_function(self, batch_key: BatchKey | None) -> None:
        # The keys were computed at submit time; a different function cannot apply now.
        if batch_key is not None and batch_key is not self.batch_key:
            raise ValueError("claims batch by the key computed at submit: pass the store's own batch_key")

    def claim(
        self, worker: str, *, lease_s: float, limit: int = 1, batch_key: BatchKey | None = None,
        route: str = "local",
    ) -> list[JobRecord]:
        """Atomically take up to ``limit`` queued jobs of ``route`` in claim order and start them.

        Without ``batch_key`` the first ``limit`` queued jobs are taken. With it (it must be
        this store's :attr:`batch_key`), the oldest job is taken plus up to ``limit - 1`` of
        the next :data:`CLAIM_SCAN_WINDOW` queued jobs with the same key. The jobs come
        back with their input images.
        """
        if lease_s <= 0 or limit < 1:
            raise ValueError("claim needs lease_s > 0 and limit >= 1")
        self._check_key_function(batch_key)
        queued = self._queued_window(route)
        with write_transaction(self.engine) as conn:
            first = queued.limit(1 if batch_key else limit).with_for_update(skip_locked=True)
            picked = conn.execute(first).all()
            ids = [row.id for row in picked]
            if picked and batch_key and limit > 1:
                others = queued.where(jobs.c.id != picked[0].id)
                ids += self._same_key(conn, others, picked[0].batch_key, limit - 1)
            return self._start(conn, ids, worker, lease_s)

    def claim_matching(
        self, worker: str, *, lease_s: float, limit: int, batch_key: BatchKey, key: Hashable,
        route: str = "local",
    ) -> list[JobRecord]:
        """Take up to ``limit`` queued jobs whose ``batch_key`` is ``key``: company for a batch.

        Used while a worker waits a few milliseconds to fill a batch it has started; the
        oldest queued job of another key is left for the next claim (it is then the head).
        """
        if lease_s <= 0 or limit < 1:
            raise ValueError("claim_matching needs lease_s > 0 and limit >= 1")
        self._check_key_function(batch_key)
        with write_transaction(self.engine) as conn:
            ids = self._same_key(conn, self._queued_window(route), t.batch_key_digest(key), limit)
            return self._start(conn, ids, worker, lease_s)

    @staticmethod
    def _same_key(conn: sa.Connection, queued: sa.Select, key: str | None, wanted: int) -> list[str]:
        """Up to ``wanted`` ids among the first window of ``queued`` with batch key ``key``, locked."""
        if key is None:
            return []  # no key stored: such a job runs alone
        window = conn.execute(queued.limit(CLAIM_SCAN_WINDOW)).all()
        chosen = [row.id for row in window if row.batch_key == key][:wanted]
        # The window was read without locks; lock what we chose, skipping rows another
        # claimer holds, and keep claim order.
        locked = sa.select(jobs.c.id).where(jobs.c.id.in_(chosen), jobs.c.status == QUEUED.value)
        held = set(conn.execute(locked.with_for_update(skip_locked=True)).scalars())
        return [job_id for job_id in chosen if job_id in held]

    @staticmethod
    def _start(conn: sa.Connection, ids: list[str], worker: str, lease_s: float) -> list[JobRecord]:
        """Mark the (locked, queued) jobs ``ids`` running under ``worker``, with their images."""
        if not ids:
            return []
        now = t.utc_now()
        stmt = sa.update(jobs).where(jobs.c.id.in_(ids), jobs.c.status == QUEUED.value)
        stmt = stmt.values(t.claimed(worker, now, lease_s)).returning(*jobs.c)
        rows = {row.id: row._mapping for row in conn.execute(stmt)}
        images = load_images(conn, {i for row in rows.values() for i in input_ids(row["inputs"])})
        started = []
        for job_id in (job_id for job_id in ids if job_id in rows):
            row = rows[job_id]
            if not input_ids(row["inputs"]) <= images.keys():
                # Never happens unless someone deleted input images; failing the job keeps it
                # from coming back to every claim.
                lost = t.failed(now, "input_missing", "the job's input images are missing from the store")
                conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(lost))
                continue
            record = t.job_record(row)
            request = attach_inputs(record.request, row["inputs"], images)
            started.append(record.model_copy(update={"request": request}))
        return started

    # ---- worker updates (guarded) and maintenance --------------------------------------------

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
            if conn.execute(stmt).rowcount != 1:
                return False
            clear_previews(conn, [job_id])  # every guarded transition leaves running
            return True

    def record_upstream(self, job_id: str, worker: str, attempt: int, upstream_id: str) -> bool:
        """Store the upstream's id of a running gateway job (guarded); committed before the
        gateway waits on the upstream, so whoever runs the job next resumes that id."""
        stmt = sa.update(jobs).where(*_guard(job_id, worker, attempt)).values(upstream_id=upstream_id)
        with write_transaction(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

    def heartbeats(
        self, held: list[tuple[str, int]], worker: str, *, lease_s: float,
        progress: tuple[int, int] | None = None, previews: dict[str, tuple[int, bytes]] | None = None,
    ) -> dict[str, bool | None]:
        """Extend the leases of a batch's jobs (and store its progress) in one transaction.

        ``previews`` (``{job id: (step, image bytes)}``) replace those jobs' live previews
        (:mod:`pixelmill.jobs.previews`) in the same transaction, for leases still held.
        One commit (one fsync) per beat, whatever the batch size. Returns, per job id,
        whether its cancellation was requested, or None when the job is no longer running
        under this worker and attempt (its lease is lost: stop working on it).
        """
        now = t.utc_now()
        values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_s), "heartbeat_at": now}
        if progress is not None:
            values["progress_step"], values["progress_total"] = progress
        answers: dict[str, bool | None] = {}
        with write_transaction(self.engine) as conn:
            for job_id, attempt in held:
                stmt = sa.update(jobs).where(*_guard(job_id, worker, attempt)).values(values)
                cancel = conn.execute(stmt.returning(jobs.c.cancel_requested)).scalar_one_or_none()
                answers[job_id] = None if cancel is None else bool(cancel)
                if cancel is not None and previews and job_id in previews:
                    put_preview(conn, job_id, attempt, *previews[job_id])
        return answers

    def complete_batch(self, worker: str, completions: list[Completion]) -> dict[str, JobRecord | None]:
        """running → succeeded for every job of a batch, in one transaction (one commit).

        Returns, per job id, the job as stored now, or None for a stale attempt (nothing
        changed). ``Completion.model``, if given, records the model that really ran.
        """
        now, done = t.utc_now(), {}
        with write_transaction(self.engine) as conn:
            for completion in completions:
                guard = _guard(completion.job_id, worker, completion.attempt)
                stmt = sa.update(jobs).where(*guard).values(completion.values(now)).returning(*jobs.c)
                row = conn.execute(stmt).first()
                done[completion.job_id] = t.job_record(row._mapping) if row is not None else None
            clear_previews(conn, [job_id for job_id, job in done.items() if job is not None])
        return done

    def fail(
        self, job_id: str, worker: str, attempt: int, *, code: str, message: str, retry: bool = False
    ) -> bool:
        """running → failed, or back to queued when ``retry`` and attempts remain.

        A retryable failure of a job whose cancellation was requested ends it canceled.
        """
        def decide(job: sa.Row) -> dict[str, Any]:
            if retry and job.cancel_requested:
                return t.canceled(t.utc_now())
            if retry and job.attempt < job.max_attempts:
                return t.requeued(attempt)
            return t.failed(t.utc_now(), code, message)

        return self._guarded_transition(job_id, worker, attempt, decide)

    def mark_canceled(self, job_id: str, worker: str, attempt: int) -> bool:
        """running → canceled (results discarded); False for a stale attempt."""
        return self._guarded_transition(job_id, worker, attempt, lambda _job: t.canceled(t.utc_now()))

    def release(self, job_id: str, worker: str, attempt: int) -> bool:
        """Give a running job back to the queue (graceful shutdown) without using up an attempt."""
        # Nobody wants a job back in the queue whose cancellation was requested.
        return self._guarded_transition(
            job_id, worker, attempt,
            lambda job: t.canceled(t.utc_now()) if job.cancel_requested else t.requeued(attempt - 1),
        )

    def reap_expired(self, *, now: datetime | None = None) -> list[str]:
        """Requeue (attempts left) or fail (``worker_lost``) running jobs whose lease expired.

        A job whose cancellation was requested ends canceled. Returns the affected ids. Safe
        from every host at once: expired rows are locked (SKIP LOCKED on PostgreSQL, the
        write lock on SQLite) and each UPDATE re-checks the expired lease.
        """
        now = t.utc(now) if now is not None else t.utc_now()
        expired = (jobs.c.status == RUNNING.value, jobs.c.lease_expires_at < now)
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
            clear_previews(conn, affected)
        return affected

"""The durable job store: every generation is a row here before the client gets an answer.

Synchronous on purpose (callers run it in a thread); every method is one short
transaction. Two rules keep concurrent API hosts and workers honest:

* terminal states (succeeded, failed, canceled) never change;
* every write a worker makes is guarded by ``(job_id, worker, attempt, status=running)``
  in the UPDATE's WHERE clause, so a late answer from a stale attempt changes nothing.

Claims are race-free: PostgreSQL takes candidates with ``SELECT … FOR UPDATE SKIP LOCKED``
and the UPDATE re-checks ``status = 'queued'``; on SQLite every write transaction starts
with ``BEGIN IMMEDIATE``, so claimers take turns. Same statements for both: SQLAlchemy
renders no ``FOR UPDATE`` for SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from pixelmill.core.types import GenerationRequest, JobRecord, JobStatus, WebhookSpec
from pixelmill.core.errors import InvalidRequest, NotFound, Overloaded
from pixelmill.db import tables as t
from pixelmill.db.engine import create_db_engine, read_transaction, upgrade_schema, write_transaction
from pixelmill.db.tables import batches, jobs

QUEUE_LOCK_KEY = 0x706978_71756575  # "pixqueu"
"""PostgreSQL advisory lock serialising capacity-checked submits (exact ``max_queued``)."""
CLAIM_SCAN_WINDOW = 64
"""How many queued jobs past the oldest a batching claim looks at for compatible ones."""
MAX_PAGE = 1000
"""Largest ``limit`` of :meth:`JobStore.list_jobs`."""

QUEUED, RUNNING = JobStatus.queued.value, JobStatus.running.value
BatchKey = Callable[[GenerationRequest], Hashable]
Compatible = Callable[[GenerationRequest, GenerationRequest], bool]


@dataclass(frozen=True)
class Completion:
    """What a worker stores for one job that finished with results (see :meth:`JobStore.complete`)."""

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

    def values(self, now: datetime) -> dict[str, Any]:
        """The row's new values: succeeded, with results and ledger."""
        ledger = {"gpu_seconds": self.gpu_seconds, "sampler": self.sampler, "width": self.width,
                  "height": self.height, **({"model": self.model} if self.model else {})}
        return t.succeeded(now, self.result_ids, self.seeds, self.control_ids, **ledger)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _guard(job_id: str, worker: str, attempt: int) -> tuple[sa.ColumnElement[bool], ...]:
    """The WHERE clause of every worker write: this job, this worker, this attempt, running."""
    return (jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.attempt == attempt, jobs.c.status == RUNNING)


class JobStore:
    """Jobs, batches and their life cycle in SQLite or PostgreSQL (see module docstring)."""

    def __init__(self, engine: sa.Engine, *, overload_retry_after_s: int = 5):
        self.engine = engine
        self.overload_retry_after_s = overload_retry_after_s

    @classmethod
    def open(cls, url: str) -> JobStore:
        """Connect to ``url`` (a path, ``sqlite:///…`` or ``postgresql://…``), upgrading its schema."""
        engine = create_db_engine(url)
        upgrade_schema(engine)
        return cls(engine)

    # ---- submitting ------------------------------------------------------------------------

    def submit(
        self, request: GenerationRequest, *, idempotency_key: str | None = None, batch_id: str | None = None,
        webhook: WebhookSpec | None = None, priority: int = 0, api_key_id: str | None = None,
        max_attempts: int = 3, max_queued: int | None = None, max_active: int | None = None,
    ) -> tuple[JobRecord, bool]:
        """Queue one job; returns ``(job, created)``.

        A repeated ``idempotency_key`` with the same body returns the first job
        (``created=False``), with a different body raises :class:`InvalidRequest`. With
        ``max_queued`` set and that many jobs queued, raises :class:`Overloaded` and
        stores nothing. ``batch_id`` adds the job to an existing batch. ``max_active``
        bounds the queued+running jobs of ``api_key_id`` the same way.
        """
        row = t.new_job(
            request, created_at=_now(), webhook=webhook, priority=priority, api_key_id=api_key_id,
            max_attempts=max_attempts, batch_id=batch_id, idempotency_key=idempotency_key,
        )
        try:
            return self._submit_once(row, max_queued, max_active)
        except sa.exc.IntegrityError:
            if idempotency_key is None:
                raise
        # Lost a race for the same key (PostgreSQL): the winner's row is committed now.
        return self._submit_once(row, max_queued, max_active)

    def _submit_once(
        self, row: dict[str, Any], max_queued: int | None, max_active: int | None
    ) -> tuple[JobRecord, bool]:
        with write_transaction(self.engine) as conn:
            if row["idempotency_key"] is not None:
                existing = self._by_idempotency_key(conn, row["idempotency_key"], row["request_hash"])
                if existing is not None:
                    return existing, False
            self._check_capacity(conn, 1, max_queued)
            self._check_key_capacity(conn, row["api_key_id"], 1, max_active)
            if row["batch_id"] is not None:
                self._grow_batch(conn, row["batch_id"])
            return t.job_record(conn.execute(sa.insert(jobs).returning(*jobs.c), [row]).one()._mapping), True

    def _by_idempotency_key(self, conn: sa.Connection, key: str, digest: str) -> JobRecord | None:
        row = conn.execute(sa.select(jobs).where(jobs.c.idempotency_key == key)).first()
        if row is not None and row.request_hash != digest:
            raise InvalidRequest(
                f"Idempotency-Key {key!r} was used with a different request", param="Idempotency-Key"
            )
        return None if row is None else t.job_record(row._mapping)

    def _check_capacity(self, conn: sa.Connection, adding: int, max_queued: int | None) -> None:
        if max_queued is None:
            return
        if conn.dialect.name == "postgresql":
            # READ COMMITTED would let two submitters both see room for one more job.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": QUEUE_LOCK_KEY})
        queued = self._count(conn, QUEUED)
        if queued + adding > max_queued:
            message = f"the queue is full ({queued} jobs queued, limit {max_queued}); retry later"
            raise Overloaded(message, retry_after=self.overload_retry_after_s)

    def _check_key_capacity(
        self, conn: sa.Connection, key_id: str | None, adding: int, limit: int | None
    ) -> None:
        """Overloaded when the key would have more than ``limit`` queued+running jobs."""
        if limit is None or key_id is None:
            return
        # Inside the submit transaction (and the PostgreSQL queue lock): two submits never both see room.
        mine = (jobs.c.api_key_id == key_id, jobs.c.status.in_((QUEUED, RUNNING)))
        active = sa.select(sa.func.count()).where(*mine)
        count = conn.execute(active).scalar_one()
        if count + adding > limit:
            message = f"this API key has {count} jobs queued or running (limit {limit}); retry later"
            raise Overloaded(message, retry_after=self.overload_retry_after_s)

    def _grow_batch(self, conn: sa.Connection, batch_id: str) -> None:
        stmt = sa.update(batches).where(batches.c.id == batch_id).values(size=batches.c.size + 1)
        if conn.execute(stmt).rowcount == 0:
            raise NotFound(f"batch {batch_id!r} does not exist", param="batch_id")

    def submit_batch(
        self, requests: list[GenerationRequest], *, webhook: WebhookSpec | None = None, priority: int = 0,
        api_key_id: str | None = None, max_attempts: int = 3, max_queued: int | None = None,
        max_active: int | None = None,
    ) -> tuple[str, list[JobRecord]]:
        """Queue all ``requests`` as one batch in one transaction (all or nothing)."""
        if not requests:
            raise InvalidRequest("a batch needs at least one request", param="requests")
        batch_id, now = t.new_batch_id(), _now()
        # One microsecond apart: claim order, listings and batch_jobs follow submission order.
        rows = [
            t.new_job(request, created_at=now + timedelta(microseconds=i), webhook=webhook, priority=priority,
                      api_key_id=api_key_id, max_attempts=max_attempts, batch_id=batch_id)
            for i, request in enumerate(requests)
        ]
        with write_transaction(self.engine) as conn:
            self._check_capacity(conn, len(rows), max_queued)
            self._check_key_capacity(conn, api_key_id, len(rows), max_active)
            conn.execute(sa.insert(batches), [{"id": batch_id, "created_at": now, "size": len(rows)}])
            inserted = conn.execute(sa.insert(jobs).returning(*jobs.c), rows).all()
        by_id = {row.id: t.job_record(row._mapping) for row in inserted}
        return batch_id, [by_id[row["id"]] for row in rows]

    # ---- reading ---------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id``; :class:`NotFound` when there is none."""
        with read_transaction(self.engine) as conn:
            return t.job_record(self._row(conn, job_id)._mapping)

    def _row(self, conn: sa.Connection, job_id: str, *, lock: bool = False) -> sa.Row:
        stmt = sa.select(jobs).where(jobs.c.id == job_id)
        row = conn.execute(stmt.with_for_update() if lock else stmt).first()
        if row is None:
            raise NotFound(f"job {job_id!r} does not exist", param="job_id")
        return row

    def list_jobs(
        self, *, status: JobStatus | None = None, since: datetime | None = None, batch_id: str | None = None,
        limit: int = 50, cursor: str | None = None, api_key_id: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """One page of jobs (only ``api_key_id``'s if given), newest first, and the next page's cursor."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}", param="limit")
        status = None if status is None else JobStatus(status).value
        # One row more than asked: whether it exists says if there is a next page.
        stmt = t.page_query(status=status, since=since, batch_id=batch_id, cursor=cursor, limit=limit + 1)
        if api_key_id is not None:
            stmt = stmt.where(jobs.c.api_key_id == api_key_id)
        with read_transaction(self.engine) as conn:
            records = [t.job_record(row._mapping) for row in conn.execute(stmt)]
        if len(records) <= limit:
            return records, None
        last = records[limit - 1]
        return records[:limit], t.encode_cursor(last.created_at, last.id)

    def queue_position(self, job_id: str) -> int | None:
        """1-based place of a queued job in claim order; None when it is not queued."""
        with read_transaction(self.engine) as conn:
            job = self._row(conn, job_id)
            if job.status != QUEUED:
                return None
            ahead = sa.select(sa.func.count()).where(jobs.c.status == QUEUED, t.ahead_in_queue(job))
            return conn.execute(ahead).scalar_one() + 1

    def count(self, status: JobStatus) -> int:
        """How many jobs are in ``status``."""
        with read_transaction(self.engine) as conn:
            return self._count(conn, JobStatus(status).value)

    def _count(self, conn: sa.Connection, status: str) -> int:
        return conn.execute(sa.select(sa.func.count()).where(jobs.c.status == status)).scalar_one()

    # ---- canceling and claiming ------------------------------------------------------------

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job: queued → canceled now; running → ``cancel_requested``; terminal → as is."""
        with write_transaction(self.engine) as conn:
            job = self._row(conn, job_id, lock=True)
            if job.status == QUEUED:
                values = {**t.canceled(_now()), **t.LEASE_CLEARED}
            elif job.status == RUNNING:
                values = {"cancel_requested": True}
            else:
                return t.job_record(job._mapping)
            stmt = sa.update(jobs).where(jobs.c.id == job_id, jobs.c.status == job.status).values(values)
            return t.job_record(conn.execute(stmt.returning(*jobs.c)).one()._mapping)

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
            return conn.execute(stmt).rowcount == 1

    def heartbeats(
        self, held: list[tuple[str, int]], worker: str, *, lease_s: float,
        progress: tuple[int, int] | None = None,
    ) -> dict[str, bool | None]:
        """Extend the leases of a batch's jobs (and store its progress) in one transaction.

        One commit (one fsync) per beat, whatever the batch size. Returns, per job id,
        whether its cancellation was requested, or None when the job is no longer running
        under this worker and attempt (its lease is lost: stop working on it).
        """
        now = _now()
        values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_s), "heartbeat_at": now}
        if progress is not None:
            values["progress_step"], values["progress_total"] = progress
        answers: dict[str, bool | None] = {}
        with write_transaction(self.engine) as conn:
            for job_id, attempt in held:
                stmt = sa.update(jobs).where(*_guard(job_id, worker, attempt)).values(values)
                cancel = conn.execute(stmt.returning(jobs.c.cancel_requested)).scalar_one_or_none()
                answers[job_id] = None if cancel is None else bool(cancel)
        return answers

    def complete(
        self, job_id: str, worker: str, attempt: int, *, result_ids: list[str], seeds: list[int],
        gpu_seconds: float, sampler: str, width: int, height: int, model: str | None = None,
        control_ids: list[str] = (),
    ) -> bool:
        """running → succeeded; False (nothing changed) for a stale attempt.

        ``model``, if given, records the model that really ran (the request may say None);
        ``control_ids`` are the stored preprocessed control images, if asked for.
        """
        completion = Completion(job_id, attempt, result_ids, seeds, gpu_seconds, sampler, width, height,
                                model, list(control_ids))
        return self.complete_batch(worker, [completion])[job_id] is not None

    def complete_batch(self, worker: str, completions: list[Completion]) -> dict[str, JobRecord | None]:
        """:meth:`complete` for every job of a batch in one transaction (one commit, not one each).

        Returns, per job id, the job as stored now, or None for a stale attempt (nothing changed).
        """
        now, done = _now(), {}
        with write_transaction(self.engine) as conn:
            for completion in completions:
                guard = _guard(completion.job_id, worker, completion.attempt)
                stmt = sa.update(jobs).where(*guard).values(completion.values(now)).returning(*jobs.c)
                row = conn.execute(stmt).first()
                done[completion.job_id] = t.job_record(row._mapping) if row is not None else None
        return done

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

    def update_webhook_state(self, job_id: str, state: dict) -> None:
        """Remember the last webhook delivery attempts of a job."""
        with write_transaction(self.engine) as conn:
            stmt = sa.update(jobs).where(jobs.c.id == job_id).values(webhook_state=state)
            if conn.execute(stmt).rowcount == 0:
                raise NotFound(f"job {job_id!r} does not exist", param="job_id")

    # ---- batches and the ledger ----------------------------------------------------------------

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        """How many jobs of a batch are in each status (every status present)."""
        with read_transaction(self.engine) as conn:
            self._require_batch(conn, batch_id)
            stmt = sa.select(jobs.c.status, sa.func.count()).where(jobs.c.batch_id == batch_id)
            counts = dict(conn.execute(stmt.group_by(jobs.c.status)).all())
        return {status.value: counts.get(status.value, 0) for status in JobStatus}

    def _require_batch(self, conn: sa.Connection, batch_id: str) -> None:
        if conn.execute(sa.select(batches.c.id).where(batches.c.id == batch_id)).first() is None:
            raise NotFound(f"batch {batch_id!r} does not exist", param="batch_id")

    def batch_jobs(self, batch_id: str) -> Iterator[JobRecord]:
        """The jobs of a batch in submission order, streamed; NotFound (raised now) if unknown."""
        with read_transaction(self.engine) as conn:
            self._require_batch(conn, batch_id)
        stmt = sa.select(jobs).where(jobs.c.batch_id == batch_id).order_by(jobs.c.created_at, jobs.c.id)
        return self._stream(stmt)

    def ledger(self, since: datetime | None = None) -> Iterator[JobRecord]:
        """Succeeded jobs (finished at or after ``since``) in finishing order, streamed."""
        stmt = sa.select(jobs).where(jobs.c.status == JobStatus.succeeded.value)
        if since is not None:
            stmt = stmt.where(jobs.c.finished_at >= t.utc(since))
        return self._stream(stmt.order_by(jobs.c.finished_at, jobs.c.id))

    def _stream(self, stmt: sa.Select) -> Iterator[JobRecord]:
        # yield_per: a server-side cursor on PostgreSQL, so a big batch is never all in memory.
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=200).execute(stmt):
                yield t.job_record(row._mapping)

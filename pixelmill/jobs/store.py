"""The durable job store: every generation is a row here before the client gets an answer.

Synchronous on purpose (callers run it in a thread); every method is one short
transaction. Terminal states (succeeded, failed, canceled) never change; every status a
method sets is checked against :mod:`pixelmill.core.lifecycle`.

This module submits, reads and cancels jobs; claiming and everything a worker writes
under its lease is :class:`~pixelmill.jobs.leases.LeaseStore`, which :class:`JobStore`
extends. Records read here carry the request *without* its input images (init, mask
and ControlNet images are empty, see :mod:`pixelmill.jobs.inputs`): reading a job or a
page of jobs costs the same whatever the size of its images. Only a claim loads them.

Idempotency keys are per API key: the same key sent with two API keys names two jobs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from pixelmill.core.batching import batch_key as default_batch_key
from pixelmill.core.errors import InvalidRequest, NotFound, Overloaded
from pixelmill.core.types import GenerationRequest, JobRecord, JobStatus, WebhookSpec
from pixelmill.db import tables as t
from pixelmill.db.engine import create_db_engine, read_transaction, upgrade_schema, write_transaction
from pixelmill.db.tables import batches, jobs
from pixelmill.jobs.inputs import new_job_row, store_images
from pixelmill.jobs.leases import CLAIM_SCAN_WINDOW, BatchKey, Completion, LeaseStore
from pixelmill.jobs.previews import LivePreview, read_preview

__all__ = ["CLAIM_SCAN_WINDOW", "Completion", "JobStore", "MAX_PAGE", "QUEUE_LOCK_KEY", "RouteLoad"]

QUEUE_LOCK_KEY = 0x706978_71756575  # "pixqueu"
"""PostgreSQL advisory lock serialising capacity-checked submits (exact ``max_queued``)."""
MAX_PAGE = 1000
"""Largest ``limit`` of :meth:`JobStore.list_jobs`."""

QUEUED, RUNNING = JobStatus.queued, JobStatus.running


@dataclass(frozen=True)
class RouteLoad:
    """One route's queue: queued and running jobs, the mean run time (started → finished)
    of its latest succeeded jobs (None without any), its oldest queued job and its latest
    heartbeat. The gateway estimates a local job's expected wait from it."""

    queued: int
    running: int
    mean_job_s: float | None
    oldest_queued_at: datetime | None
    last_heartbeat: datetime | None


class JobStore(LeaseStore):
    """Jobs, batches and their life cycle in SQLite or PostgreSQL (see module docstring)."""

    def __init__(
        self, engine: sa.Engine, *, overload_retry_after_s: int = 5, batch_key: BatchKey = default_batch_key
    ):
        super().__init__(engine, batch_key=batch_key)
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
        route: str = "local", shadow_of: str | None = None, cancel_after_s: float | None = None,
    ) -> tuple[JobRecord, bool]:
        """Queue one job; returns ``(job, created)``.

        ``cancel_after_s``: the job is canceled when still unfinished that long after it
        was created (see :meth:`overdue`).

        ``route`` is who claims it: ``"local"`` workers or an upstream backend's name
        (:mod:`pixelmill.gateway`); ``shadow_of`` marks a shadow run of that local job.

        A repeated ``idempotency_key`` of the same ``api_key_id`` with the same body returns
        the first job (``created=False``), with a different body raises
        :class:`InvalidRequest`; another API key's jobs are never looked at. With
        ``max_queued`` set and that many jobs queued, raises :class:`Overloaded` and
        stores nothing. ``batch_id`` adds the job to an existing batch. ``max_active``
        bounds the queued+running jobs of ``api_key_id`` the same way.
        """
        now = t.utc_now()
        row, images = new_job_row(
            request, self.batch_key, created_at=now, webhook=webhook, priority=priority,
            api_key_id=api_key_id, max_attempts=max_attempts, batch_id=batch_id,
            idempotency_key=idempotency_key,
        )
        cancel_at = now + timedelta(seconds=cancel_after_s) if cancel_after_s is not None else None
        row.update(route=route, shadow_of=shadow_of, cancel_at=cancel_at)
        try:
            return self._submit_once(row, images, max_queued, max_active)
        except sa.exc.IntegrityError:
            if idempotency_key is None:
                raise
        # Lost a race for the same key (PostgreSQL): the winner's row is committed now.
        return self._submit_once(row, images, max_queued, max_active)

    def _submit_once(
        self, row: dict[str, Any], images: dict[str, bytes], max_queued: int | None, max_active: int | None
    ) -> tuple[JobRecord, bool]:
        with write_transaction(self.engine) as conn:
            if row["idempotency_key"] is not None:
                existing = self._by_idempotency_key(conn, row)
                if existing is not None:
                    return existing, False
            self._check_capacity(conn, 1, max_queued)
            self._check_key_capacity(conn, row["api_key_id"], 1, max_active)
            if row["batch_id"] is not None:
                self._grow_batch(conn, row["batch_id"])
            store_images(conn, images, row["created_at"])
            return t.job_record(conn.execute(sa.insert(jobs).returning(*jobs.c), [row]).one()._mapping), True

    def _by_idempotency_key(self, conn: sa.Connection, row: dict[str, Any]) -> JobRecord | None:
        """The job submitted earlier under ``row``'s key and scope; InvalidRequest if its body differs."""
        key, digest = row["idempotency_key"], row["request_hash"]
        same_key = (jobs.c.idempotency_key == key, jobs.c.idempotency_scope == row["idempotency_scope"])
        existing = conn.execute(sa.select(jobs).where(*same_key)).first()
        if existing is not None and existing.request_hash != digest:
            raise InvalidRequest(
                f"Idempotency-Key {key!r} was used with a different request", param="Idempotency-Key"
            )
        return None if existing is None else t.job_record(existing._mapping)

    def _check_capacity(self, conn: sa.Connection, adding: int, max_queued: int | None) -> None:
        if max_queued is None:
            return
        if conn.dialect.name == "postgresql":
            # READ COMMITTED would let two submitters both see room for one more job.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": QUEUE_LOCK_KEY})
        queued = self._count(conn, QUEUED.value)
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
        mine = (jobs.c.api_key_id == key_id, jobs.c.status.in_((QUEUED.value, RUNNING.value)))
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
        max_active: int | None = None, routes: Sequence[str] | None = None,
    ) -> tuple[str, list[JobRecord]]:
        """Queue all ``requests`` as one batch in one transaction (all or nothing);
        ``routes`` (one per request, default all ``"local"``) as in :meth:`submit`."""
        if not requests:
            raise InvalidRequest("a batch needs at least one request", param="requests")
        batch_id, now = t.new_batch_id(), t.utc_now()
        # One microsecond apart: claim order, listings and batch_jobs follow submission order.
        rows, images = [], {}
        for i, request in enumerate(requests):
            row, row_images = new_job_row(
                request, self.batch_key, created_at=now + timedelta(microseconds=i), webhook=webhook,
                priority=priority, api_key_id=api_key_id, max_attempts=max_attempts, batch_id=batch_id,
            )
            row.update(route=routes[i] if routes else "local", shadow_of=None, cancel_at=None)
            rows.append(row)
            images.update(row_images)  # one init image under many prompts: stored once
        with write_transaction(self.engine) as conn:
            self._check_capacity(conn, len(rows), max_queued)
            self._check_key_capacity(conn, api_key_id, len(rows), max_active)
            conn.execute(sa.insert(batches), [{"id": batch_id, "created_at": now, "size": len(rows)}])
            store_images(conn, images, now)
            inserted = conn.execute(sa.insert(jobs).returning(*jobs.c), rows).all()
        by_id = {row.id: t.job_record(row._mapping) for row in inserted}
        return batch_id, [by_id[row["id"]] for row in rows]

    # ---- reading ---------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id`` (its request without input images); :class:`NotFound` when there is none."""
        with read_transaction(self.engine) as conn:
            return t.job_record(self._row(conn, job_id)._mapping)

    def _row(self, conn: sa.Connection, job_id: str, *, lock: bool = False) -> sa.Row:
        stmt = sa.select(jobs).where(jobs.c.id == job_id)
        row = conn.execute(stmt.with_for_update() if lock else stmt).first()
        if row is None:
            raise NotFound(f"job {job_id!r} does not exist", param="job_id")
        return row

    def latest_preview(self, job_id: str) -> LivePreview | None:
        """The live preview a running job's worker stored last; None when there is none
        (not running, previews off, none made yet). See :mod:`pixelmill.jobs.previews`."""
        return read_preview(self.engine, job_id)

    def list_jobs(
        self, *, status: JobStatus | None = None, since: datetime | None = None, batch_id: str | None = None,
        limit: int = 50, cursor: str | None = None, api_key_id: str | None = None, route: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """One page of jobs (only ``api_key_id``'s, only ``route``'s if given), newest first, and the
        next page's cursor. ``route`` filters the rows the listing index walks in order: no sort."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}", param="limit")
        status = None if status is None else JobStatus(status).value
        # One row more than asked: whether it exists says if there is a next page.
        stmt = t.page_query(status=status, since=since, batch_id=batch_id, cursor=cursor, limit=limit + 1)
        if api_key_id is not None:
            stmt = stmt.where(jobs.c.api_key_id == api_key_id)
        if route is not None:
            stmt = stmt.where(jobs.c.route == route)
        with read_transaction(self.engine) as conn:
            records = [t.job_record(row._mapping) for row in conn.execute(stmt)]
        if len(records) <= limit:
            return records, None
        last = records[limit - 1]
        return records[:limit], t.encode_cursor(last.created_at, last.id)

    def queue_position(self, job_id: str) -> int | None:
        """1-based place of a queued job in claim order; None when it is not queued."""
        return self.queue_positions([job_id]).get(job_id)

    def queue_positions(self, job_ids: Sequence[str]) -> dict[str, int]:
        """:meth:`queue_position` of many jobs in one query: ``{job id: place}`` for those
        still queued (others are left out). For a page of a listing, whatever its size."""
        if not job_ids:
            return {}
        target = jobs.alias("target")
        # ahead_in_queue reads the target's priority, created_at and id: here its columns,
        # so the count is a subquery correlated with each target row.
        ahead = (sa.select(sa.func.count()).select_from(jobs)
                 .where(jobs.c.status == QUEUED.value, t.ahead_in_queue(target.c))
                 .correlate(target).scalar_subquery())
        stmt = sa.select(target.c.id, ahead + 1).where(
            target.c.id.in_(list(job_ids)), target.c.status == QUEUED.value)
        with read_transaction(self.engine) as conn:
            return {job_id: position for job_id, position in conn.execute(stmt)}

    def last_heartbeat(self, route: str | None = None) -> datetime | None:
        """When any worker (of ``route``, if given) last renewed a running job's lease
        (None: no job is running)."""
        stmt = sa.select(sa.func.max(jobs.c.heartbeat_at)).where(jobs.c.status == RUNNING.value)
        if route is not None:
            stmt = stmt.where(jobs.c.route == route)
        with read_transaction(self.engine) as conn:
            return t.utc_or_none(conn.execute(stmt).scalar_one())

    def route_load(self, route: str, *, recent: int = 20) -> RouteLoad:
        """The queue of ``route`` now, for the gateway's overflow rule (see :class:`RouteLoad`)."""
        mine = jobs.c.route == route
        by_status = (sa.select(jobs.c.status, sa.func.count(), sa.func.min(jobs.c.created_at),
                               sa.func.max(jobs.c.heartbeat_at))
                     .where(mine, jobs.c.status.in_((QUEUED.value, RUNNING.value))).group_by(jobs.c.status))
        last = (sa.select(jobs.c.started_at, jobs.c.finished_at)
                .where(jobs.c.status == JobStatus.succeeded.value, mine, jobs.c.started_at.is_not(None))
                .order_by(jobs.c.finished_at.desc()).limit(recent))
        with read_transaction(self.engine) as conn:
            rows = {status: (count, oldest, beat) for status, count, oldest, beat in conn.execute(by_status)}
            times = [(t.utc(end) - t.utc(start)).total_seconds() for start, end in conn.execute(last)]
        queued, oldest, _ = rows.get(QUEUED.value, (0, None, None))
        running, _, beat = rows.get(RUNNING.value, (0, None, None))
        return RouteLoad(queued=queued, running=running, mean_job_s=sum(times) / len(times) if times else None,
                         oldest_queued_at=t.utc_or_none(oldest), last_heartbeat=t.utc_or_none(beat))

    def count(self, status: JobStatus) -> int:
        """How many jobs are in ``status``."""
        with read_transaction(self.engine) as conn:
            return self._count(conn, JobStatus(status).value)

    def _count(self, conn: sa.Connection, status: str) -> int:
        return conn.execute(sa.select(sa.func.count()).where(jobs.c.status == status)).scalar_one()

    # ---- canceling --------------------------------------------------------------------------

    def overdue(self, *, now: datetime | None = None, limit: int = 100) -> list[str]:
        """Ids of queued or running jobs whose ``cancel_at`` deadline has passed (oldest
        deadline first, at most ``limit``); canceling them is the caller's move."""
        now = t.utc(now) if now is not None else t.utc_now()
        unfinished = jobs.c.status.in_([QUEUED.value, RUNNING.value])
        stmt = sa.select(jobs.c.id).where(unfinished, jobs.c.cancel_at < now, jobs.c.cancel_requested.is_(False))
        with read_transaction(self.engine) as conn:
            return list(conn.execute(stmt.order_by(jobs.c.cancel_at).limit(limit)).scalars())

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job: queued → canceled now; running → ``cancel_requested``; terminal → as is."""
        with write_transaction(self.engine) as conn:
            job = self._row(conn, job_id, lock=True)
            if job.status == QUEUED.value:
                values = {**t.canceled(t.utc_now(), QUEUED), **t.LEASE_CLEARED}
            elif job.status == RUNNING.value:
                values = {"cancel_requested": True}
            else:
                return t.job_record(job._mapping)
            stmt = sa.update(jobs).where(jobs.c.id == job_id, jobs.c.status == job.status).values(values)
            return t.job_record(conn.execute(stmt.returning(*jobs.c)).one()._mapping)

    # ---- webhooks, batches and the ledger ---------------------------------------------------

    def update_webhook_state(self, job_id: str, state: dict) -> None:
        """Remember the last webhook delivery attempts of a job."""
        with write_transaction(self.engine) as conn:
            stmt = sa.update(jobs).where(jobs.c.id == job_id).values(webhook_state=state)
            if conn.execute(stmt).rowcount == 0:
                raise NotFound(f"job {job_id!r} does not exist", param="job_id")

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

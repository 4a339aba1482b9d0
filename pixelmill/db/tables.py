"""The job store's tables, and the mapping between a ``jobs`` row and a :class:`JobRecord`.

Timestamps are timezone-aware UTC. PostgreSQL keeps the zone; SQLite stores naive text,
so every datetime written must already be UTC (the store only writes
``datetime.now(timezone.utc)`` and values passed through :func:`utc`) and every one read
is made aware again in :func:`job_record`.

Input images (init, mask, each ControlNet image) are not in the ``request`` column: they
sit once each in ``input_images`` (keyed by their SHA-256) and the row's ``inputs``
column names them (see :mod:`pixelmill.jobs.inputs`). Reading a row without them gives
the request with those fields emptied; only claiming a job loads them back.
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
from collections.abc import Hashable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pixelmill.core.lifecycle import check_transition
from pixelmill.core.types import GenerationRequest, JobError, JobRecord, JobStatus, WebhookSpec

UtcDateTime = sa.DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base of the job store; ``Base.metadata`` is what migrations build."""


class Job(Base):
    """One generation job: request, life cycle, lease, results and cost-ledger facts."""

    __tablename__ = "jobs"
    # Idempotency keys are per tenant: the same key from two API keys names two jobs.
    __table_args__ = (
        sa.UniqueConstraint("idempotency_key", "idempotency_scope", name="uq_jobs_idempotency"),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    priority: Mapped[int] = mapped_column(sa.Integer, default=0)
    request: Mapped[str] = mapped_column(sa.Text)
    # Its images' ids in input_images. SQL NULL, not JSON null, for "no images": the
    # migration's downgrade selects on it.
    inputs: Mapped[dict | None] = mapped_column(sa.JSON(none_as_null=True))
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    batch_id: Mapped[str | None] = mapped_column(sa.String(40), sa.ForeignKey("batches.id"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    # The key's namespace, set with it: api_key_id, or "" without one. Not api_key_id
    # itself because NULLs never collide in a unique constraint (SQLite, PostgreSQL < 15).
    idempotency_scope: Mapped[str | None] = mapped_column(sa.String(64))
    api_key_id: Mapped[str | None] = mapped_column(sa.String(64))
    batch_key: Mapped[str | None] = mapped_column(sa.String(64), doc="See batch_key_digest.")
    attempt: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(sa.String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    progress_step: Mapped[int] = mapped_column(sa.Integer, default=0)
    progress_total: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    result_ids: Mapped[list] = mapped_column(sa.JSON, default=list)
    result_seeds: Mapped[list] = mapped_column(sa.JSON, default=list)
    control_result_ids: Mapped[list | None] = mapped_column(sa.JSON)
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    webhook: Mapped[dict | None] = mapped_column(sa.JSON)
    webhook_state: Mapped[dict | None] = mapped_column(sa.JSON)
    # cost ledger
    model: Mapped[str | None] = mapped_column(sa.String(255))
    mode: Mapped[str] = mapped_column(sa.String(16))
    width: Mapped[int | None] = mapped_column(sa.Integer)
    height: Mapped[int | None] = mapped_column(sa.Integer)
    steps: Mapped[int] = mapped_column(sa.Integer)
    sampler: Mapped[str | None] = mapped_column(sa.String(64))
    images: Mapped[int] = mapped_column(sa.Integer, default=0)
    gpu_seconds: Mapped[float | None] = mapped_column(sa.Float)
    # gateway (migration 0007): "local" for this fleet's workers, else an upstream backend's
    # name; the upstream's id is written before the worker waits on it (a restart resumes it).
    route: Mapped[str] = mapped_column(sa.String(64), default="local", server_default="local")
    upstream_id: Mapped[str | None] = mapped_column(sa.String(255))
    upstream_cost: Mapped[float | None] = mapped_column(sa.Float)
    shadow_of: Mapped[str | None] = mapped_column(sa.String(40))
    # A deadline (Replicate's Cancel-After, migration 0008): past it, an unfinished job is
    # canceled by whichever API host's maintenance sees it first, restarts included.
    cancel_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


# Claim order is (priority desc, created_at, id) among the queued jobs of one route (local
# workers and each upstream backend claim their own): this index answers "the next queued
# job" and "how many are ahead of me" without a sort (migration 0007 added ``route``).
sa.Index("ix_jobs_claim", Job.status, Job.route, Job.priority.desc(), Job.created_at, Job.id)
# Listings are newest first (page_query), filtered by status and/or API key: these walk a
# page's rows in order instead of sorting every match (migration 0005). Both also serve
# ``status = ?`` / ``api_key_id = ?`` counts, so status needs no index of its own.
sa.Index("ix_jobs_listing", Job.created_at.desc(), Job.id.desc())
sa.Index("ix_jobs_status_listing", Job.status, Job.created_at.desc(), Job.id.desc())
sa.Index("ix_jobs_key_listing", Job.api_key_id, Job.created_at.desc(), Job.id.desc())
# Overdue deadlines among queued and running jobs: two short range scans, however long the history.
sa.Index("ix_jobs_cancel_at", Job.status, Job.cancel_at)


class Batch(Base):
    """A group of jobs submitted together (``POST /v1/batches``)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    size: Mapped[int] = mapped_column(sa.Integer)


class Blob(Base):
    """Result bytes kept in the database, so every API host can serve every result."""

    __tablename__ = "blobs"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    media_type: Mapped[str] = mapped_column(sa.String(64))
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class InputImage(Base):
    """An input image of queued or past jobs, stored once whatever number of jobs use it."""

    __tablename__ = "input_images"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True, doc="SHA-256 of data, hex.")
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of the token is stored, plus a non-secret display prefix."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), index=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    scope: Mapped[str] = mapped_column(sa.String(16))
    rate: Mapped[str | None] = mapped_column(sa.String(32))
    max_running: Mapped[int | None] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class JobPreview(Base):
    """The latest live preview of a running job, overwritten in place (jobs/previews.py)."""

    __tablename__ = "job_previews"

    job_id: Mapped[str] = mapped_column(sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    attempt: Mapped[int] = mapped_column(sa.Integer, doc="The attempt that made it (later ones skip it).")
    step: Mapped[int] = mapped_column(sa.Integer)
    media_type: Mapped[str] = mapped_column(sa.String(32))
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


jobs = Job.__table__
batches = Batch.__table__
blobs = Blob.__table__
input_images = InputImage.__table__
api_keys = ApiKeyRow.__table__
job_previews = JobPreview.__table__


def new_job_id() -> str:
    """A fresh unguessable job id (26 characters)."""
    return "job_" + secrets.token_urlsafe(16)


def new_batch_id() -> str:
    """A fresh unguessable batch id (28 characters)."""
    return "batch_" + secrets.token_urlsafe(16)


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def utc_now() -> datetime:
    """The current time, aware UTC: the only clock the store writes."""
    return datetime.now(timezone.utc)


def request_hash(
    request: GenerationRequest, webhook: WebhookSpec | None, priority: int, api_key_id: str | None
) -> str:
    """sha256 of the canonical JSON of everything that makes two submissions "the same".

    The API key has been part of it since keys were global; it stays so that rows
    stored before keys were scoped per tenant keep their hashes.
    """
    body = {
        "request": request.model_dump(mode="json"),
        "webhook": webhook.model_dump(mode="json") if webhook else None,
        "priority": priority,
        "api_key_id": api_key_id,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_job(
    request: GenerationRequest, *, stored: GenerationRequest, inputs: dict | None, batch_key: str | None,
    created_at: datetime, webhook: WebhookSpec | None, priority: int,
    api_key_id: str | None, max_attempts: int, batch_id: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Column values of a new queued job with a fresh id; ledger columns come from the request.

    ``stored``/``inputs`` are ``request`` split by ``pixelmill.jobs.inputs.split_inputs``;
    ``batch_key`` is the digest of its batch key. ``width``/``height`` are the size the
    request policy resolved (None for txt2img at the model's native size).
    """
    return {
        "id": new_job_id(), "status": JobStatus.queued.value, "request": stored.model_dump_json(),
        "inputs": inputs, "request_hash": request_hash(request, webhook, priority, api_key_id),
        "webhook": webhook.model_dump(mode="json") if webhook else None,
        "priority": priority, "api_key_id": api_key_id, "max_attempts": max_attempts,
        "batch_id": batch_id, "idempotency_key": idempotency_key, "created_at": created_at,
        "idempotency_scope": idempotency_scope(idempotency_key, api_key_id), "batch_key": batch_key,
        "attempt": 0, "cancel_requested": False, "progress_step": 0, "progress_total": 0,
        "result_ids": [], "result_seeds": [], "images": 0,
        "model": request.model, "mode": request.mode.value, "width": request.width,
        "height": request.height, "steps": request.steps,
    }


def idempotency_scope(key: str | None, api_key_id: str | None) -> str | None:
    """Namespace of an Idempotency-Key: the API key's id, "" without one, None without a key."""
    return None if key is None else api_key_id or ""


def batch_key_digest(key: Hashable) -> str:
    """A stable text form (SHA-256 of canonical JSON) of a batch key, for the ``batch_key`` column.

    Equal keys give equal digests in every process, whatever Python's hash seed.
    """
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), default=_canonical)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


def job_record(row: Mapping[str, Any]) -> JobRecord:
    """The domain record for a ``jobs`` row (a result row's ``_mapping``), input images left out."""
    error = None
    if row["error_code"] is not None:
        error = JobError(code=row["error_code"], message=row["error_message"] or "")
    return JobRecord(
        id=row["id"],
        status=row["status"],
        request=GenerationRequest.model_validate_json(row["request"]),
        priority=row["priority"],
        batch_id=row["batch_id"],
        idempotency_key=row["idempotency_key"],
        api_key_id=row["api_key_id"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        worker=row["worker"],
        lease_expires_at=utc_or_none(row["lease_expires_at"]),
        heartbeat_at=utc_or_none(row["heartbeat_at"]),
        progress_step=row["progress_step"],
        progress_total=row["progress_total"],
        created_at=utc(row["created_at"]),
        started_at=utc_or_none(row["started_at"]),
        finished_at=utc_or_none(row["finished_at"]),
        result_ids=row["result_ids"] or [],
        result_seeds=row["result_seeds"] or [],
        control_result_ids=row["control_result_ids"] or [],
        error=error,
        webhook=WebhookSpec.model_validate(row["webhook"]) if row["webhook"] else None,
        webhook_state=row["webhook_state"],
        model=row["model"],
        mode=row["mode"],
        width=row["width"],
        height=row["height"],
        steps=row["steps"],
        sampler=row["sampler"],
        images=row["images"],
        gpu_seconds=row["gpu_seconds"],
        route=row["route"] or "local",
        upstream_id=row["upstream_id"],
        upstream_cost=row["upstream_cost"],
        shadow_of=row["shadow_of"],
        cancel_at=utc_or_none(row["cancel_at"]),
    )


# ---- clauses and column values shared by the store's statements -------------------------

CLAIM_ORDER = (jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id)
"""Order in which queued jobs are claimed: higher priority first, then oldest first."""

LEASE_CLEARED = {"worker": None, "lease_expires_at": None, "heartbeat_at": None}


def ahead_in_queue(job: sa.Row) -> sa.ColumnElement[bool]:
    """Rows of ``job``'s route that come before it in :data:`CLAIM_ORDER`."""
    same_priority = jobs.c.priority == job.priority
    return sa.and_(jobs.c.route == job.route, sa.or_(
        jobs.c.priority > job.priority,
        sa.and_(same_priority, jobs.c.created_at < job.created_at),
        sa.and_(same_priority, jobs.c.created_at == job.created_at, jobs.c.id < job.id),
    ))


QUEUED, RUNNING = JobStatus.queued, JobStatus.running


def moved(source: JobStatus, target: JobStatus) -> dict[str, Any]:
    """``{"status": target}`` once :mod:`pixelmill.core.lifecycle` allows ``source → target``.

    Every status a writer sets comes from here; raises ``IllegalTransition`` otherwise.
    """
    check_transition(source, target)
    return {"status": target.value}


def claimed(worker: str, now: datetime, lease_s: float) -> dict[str, Any]:
    """Values of a queued job that ``worker`` starts now, leased for ``lease_s`` seconds."""
    return {**moved(QUEUED, RUNNING), "attempt": jobs.c.attempt + 1, "worker": worker, "started_at": now,
            "lease_expires_at": now + timedelta(seconds=lease_s), "heartbeat_at": now,
            "progress_step": 0, "progress_total": 0}


def succeeded(now: datetime, result_ids: list[str], seeds: list[int], control_ids: list[str] = (),
              **ledger: Any) -> dict[str, Any]:
    """Values of a job that finished with results (``ledger``: gpu_seconds, sampler, width, height).

    ``control_ids`` are the preprocessed control images, when the request asked for them;
    they are not images the ledger counts.
    """
    return {**moved(RUNNING, JobStatus.succeeded), "finished_at": now, "lease_expires_at": None,
            "result_ids": list(result_ids), "result_seeds": list(seeds), "images": len(result_ids),
            "control_result_ids": list(control_ids) or None,
            "error_code": None, "error_message": None, **ledger}


def requeued(attempt: int | sa.ColumnElement[int]) -> dict[str, Any]:
    """Values that put a running job back in the queue with ``attempt`` attempts counted."""
    return {**moved(RUNNING, QUEUED), "attempt": attempt, "started_at": None, "progress_step": 0,
            "progress_total": 0, **LEASE_CLEARED}


def canceled(now: datetime, source: JobStatus = RUNNING) -> dict[str, Any]:
    """Values of a job (``source``: queued or running) that ended canceled: no results, no error."""
    return {**moved(source, JobStatus.canceled), "finished_at": now, "lease_expires_at": None,
            "result_ids": [], "result_seeds": [], "images": 0, "error_code": None, "error_message": None}


def failed(now: datetime, code: str, message: str) -> dict[str, Any]:
    """Values of a running job that ended failed with ``code``."""
    return {**moved(RUNNING, JobStatus.failed), "finished_at": now, "lease_expires_at": None,
            "error_code": code, "error_message": message}


# Listing pages live in pixelmill.db.pages; their names stay importable from here.
from pixelmill.db.pages import after_cursor, decode_cursor, encode_cursor, page_query  # noqa: E402,F401

"""Input images out of the queue row; batch key column; idempotency keys per API key.

* ``input_images``: each input image once, keyed by its SHA-256; ``jobs.inputs`` names
  a job's images and ``jobs.request`` no longer holds them. Existing rows are rewritten,
  so a job queued before the upgrade runs with its images after it.
* ``jobs.batch_key``: digest of :func:`pixelmill.core.batching.batch_key`, computed at
  submit; filled here for jobs not finished yet.
* ``jobs.idempotency_scope``: the unique key is ``(idempotency_key, idempotency_scope)``
  instead of ``idempotency_key`` alone, so two API keys never see each other's keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
UtcDateTime = sa.DateTime(timezone=True)
# SQLite's constraint from 0001 has no name; batch mode names it by this convention.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
CHUNK = 200
"""Rows rewritten per read: big inline images are never all in memory at once."""

jobs = sa.table(
    "jobs", sa.column("id", sa.String), sa.column("status", sa.String), sa.column("request", sa.Text),
    sa.column("inputs", sa.JSON), sa.column("batch_key", sa.String),
)
input_images = sa.table("input_images", sa.column("id", sa.String), sa.column("data", sa.LargeBinary),
                        sa.column("created_at", UtcDateTime))


def _single_unique(conn: sa.Connection, columns: list[str]) -> str:
    """Name of the unique constraint on exactly ``columns`` (the convention's when unnamed)."""
    for constraint in sa.inspect(conn).get_unique_constraints("jobs"):
        if constraint["column_names"] == columns:
            return constraint["name"] or NAMING["uq"] % {"table_name": "jobs", "column_0_name": columns[0]}
    raise RuntimeError(f"jobs has no unique constraint on {columns}")


def upgrade() -> None:
    op.create_table(
        "input_images",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    old_unique = _single_unique(op.get_bind(), ["idempotency_key"])
    with op.batch_alter_table("jobs", naming_convention=NAMING) as batch:
        batch.add_column(sa.Column("inputs", sa.JSON, nullable=True))
        batch.add_column(sa.Column("idempotency_scope", sa.String(64), nullable=True))
        batch.add_column(sa.Column("batch_key", sa.String(64), nullable=True))
        batch.drop_constraint(old_unique, type_="unique")
        batch.create_unique_constraint("uq_jobs_idempotency", ["idempotency_key", "idempotency_scope"])
    _restore_claim_index()
    op.execute(
        "UPDATE jobs SET idempotency_scope = COALESCE(api_key_id, '') WHERE idempotency_key IS NOT NULL"
    )
    _move_images_out(op.get_bind())


def _restore_claim_index() -> None:
    # Rebuilding the table on SQLite recreates its indexes from reflection, which drops the
    # DESC of "priority DESC": claims would then sort every queued job. Build it again.
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_jobs_claim", table_name="jobs")
        op.create_index("ix_jobs_claim", "jobs", ["status", sa.text("priority DESC"), "created_at", "id"])


def _move_images_out(conn: sa.Connection) -> None:
    """Rewrite every row: images to ``input_images``, a batch key for unfinished jobs."""
    last, moved = "", 0
    while rows := conn.execute(
        sa.select(jobs.c.id, jobs.c.status, jobs.c.request).where(jobs.c.id > last)
        .order_by(jobs.c.id).limit(CHUNK)
    ).all():
        last = rows[-1].id
        for row in rows:
            body = json.loads(row.request)
            values = _unfinished_values(row) if row.status in ("queued", "running") else {}
            inputs, images = _split(body)
            if images:
                _insert_missing(conn, images)
                values |= {"request": json.dumps(body, separators=(",", ":")), "inputs": inputs}
                moved += 1
            if values:
                conn.execute(sa.update(jobs).where(jobs.c.id == row.id).values(values))
    if moved:
        log.info("moved the input images of %d jobs to input_images", moved)


def _split(body: dict) -> tuple[dict, dict[str, bytes]]:
    """Take the base64 images out of a request's JSON (in place): (inputs, id → bytes).

    Pydantic writes bytes as URL-safe base64; standard base64 decodes the same way here.
    """
    images: dict[str, bytes] = {}

    def take(holder: dict, field: str, emptied: str | None) -> str | None:
        encoded = holder.get(field)
        if not encoded:
            return None
        data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        images[image_id := hashlib.sha256(data).hexdigest()] = data
        holder[field] = emptied
        return image_id

    inputs = {"init_image": take(body, "init_image", None), "mask_image": take(body, "mask_image", None),
              "controlnets": [take(control, "image", "") for control in body.get("controlnets") or ()]}
    return inputs, images


def _unfinished_values(row: sa.Row) -> dict:
    """The batch key of a queued or running job."""
    # The application's own key function: what new submits store must match. A request it
    # cannot read keeps a NULL key (it then runs alone) rather than stopping the upgrade.
    from pixelmill.core.batching import batch_key
    from pixelmill.core.types import GenerationRequest
    from pixelmill.db.tables import batch_key_digest

    try:
        return {"batch_key": batch_key_digest(batch_key(GenerationRequest.model_validate_json(row.request)))}
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning("job %s: no batch key (%s); it will run alone", row.id, exc)
        return {}


def _insert_missing(conn: sa.Connection, images: dict[str, bytes]) -> None:
    present = set(conn.execute(sa.select(input_images.c.id).where(input_images.c.id.in_(images))).scalars())
    now = datetime.now(timezone.utc)
    rows = [{"id": i, "data": data, "created_at": now} for i, data in images.items() if i not in present]
    if rows:
        conn.execute(sa.insert(input_images), rows)


def downgrade() -> None:
    """Put the images back inline. Fails if two API keys used the same Idempotency-Key."""
    conn = op.get_bind()
    stored = sa.select(jobs.c.id, jobs.c.request, jobs.c.inputs).where(jobs.c.inputs.isnot(None))
    for row in conn.execute(stored).all():
        body, inputs = json.loads(row.request), row.inputs
        ids = [inputs.get("init_image"), inputs.get("mask_image"), *inputs.get("controlnets", ())]
        data = dict(conn.execute(sa.select(input_images.c.id, input_images.c.data)
                                 .where(input_images.c.id.in_([i for i in ids if i]))).all())

        def encoded(image_id: str | None) -> str | None:
            return base64.urlsafe_b64encode(data[image_id]).decode() if image_id else None

        body["init_image"] = encoded(inputs.get("init_image"))
        body["mask_image"] = encoded(inputs.get("mask_image"))
        for control, image_id in zip(body.get("controlnets") or (), inputs.get("controlnets", ())):
            control["image"] = encoded(image_id) or control.get("image", "")
        conn.execute(sa.update(jobs).where(jobs.c.id == row.id).values(request=json.dumps(body)))
    with op.batch_alter_table("jobs", naming_convention=NAMING) as batch:
        batch.drop_constraint("uq_jobs_idempotency", type_="unique")
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch.drop_column("batch_key")
        batch.drop_column("idempotency_scope")
        batch.drop_column("inputs")
    _restore_claim_index()
    op.drop_table("input_images")

"""Live previews: ``job_previews`` holds the latest preview of each running job.

One row per job, overwritten in place by the worker's heartbeat (at most about once a
second) and deleted when the job leaves ``running``: readers on any host (SSE streams,
the A1111 ``progress`` route) see what the worker saw, whichever process it runs in.
A separate table, not a ``jobs`` column, so reading or listing jobs never loads a
preview's bytes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_previews",
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("media_type", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_previews")

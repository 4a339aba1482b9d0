"""Cancel deadlines: ``jobs.cancel_at`` survives restarts.

A client may ask for a job to be canceled when it is not done after a while (Replicate's
``Cancel-After`` header). The deadline was a timer in the API process that accepted the
request, lost when that process restarted; it is now a column, checked by every API host's
maintenance loop (:meth:`pixelmill.jobs.store.JobStore.overdue`). ``ix_jobs_cancel_at``
answers "unfinished and overdue" with two short range scans. A plain ``ADD COLUMN`` (no
SQLite batch rebuild), so 0005's DESC indexes survive.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cancel_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_cancel_at", "jobs", ["status", "cancel_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_cancel_at", table_name="jobs")
    # SQLite >= 3.35 drops a column in place: no batch rebuild, the DESC indexes stay.
    op.drop_column("jobs", "cancel_at")

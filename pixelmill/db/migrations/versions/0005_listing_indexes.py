"""Indexes for job listings: newest first, filtered by status or by API key.

``GET /v1/jobs`` reads ``ORDER BY created_at DESC, id DESC`` with optional
``status = ?`` and ``api_key_id = ?`` filters (:func:`pixelmill.db.tables.page_query`).
Without an index that starts with the filter and continues in that order, a page of
queued jobs sorted every queued job (linear in the queue). Three indexes now give a
page by walking its first rows:

* ``ix_jobs_listing`` ``(created_at DESC, id DESC)``: the unfiltered (admin) listing
  and ``since``; it replaces ``ix_jobs_created_at``, which left the ``id`` tie-break to
  a sort;
* ``ix_jobs_status_listing`` ``(status, created_at DESC, id DESC)``: a status filter
  (an admin's "queued jobs"), and every ``status = ?`` count or MAX;
* ``ix_jobs_key_listing`` ``(api_key_id, created_at DESC, id DESC)``: a tenant's own
  listing (with or without a status filter) and the per-key capacity check at submit.

``ix_jobs_status`` on ``status`` alone goes: both the claim index and the new one start
with ``status``, and one fewer index is one fewer write on every status change.

SQLite forgets ``DESC`` when a later migration rebuilds ``jobs`` in batch mode (see
0004's ``_restore_claim_index``): such a migration must create these again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NEWEST_FIRST = [sa.text("created_at DESC"), sa.text("id DESC")]


def upgrade() -> None:
    op.create_index("ix_jobs_listing", "jobs", NEWEST_FIRST)
    op.create_index("ix_jobs_status_listing", "jobs", ["status", *NEWEST_FIRST])
    op.create_index("ix_jobs_key_listing", "jobs", ["api_key_id", *NEWEST_FIRST])
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_index("ix_jobs_created_at", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.drop_index("ix_jobs_key_listing", table_name="jobs")
    op.drop_index("ix_jobs_status_listing", table_name="jobs")
    op.drop_index("ix_jobs_listing", table_name="jobs")

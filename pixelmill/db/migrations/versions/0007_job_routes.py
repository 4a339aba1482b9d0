"""Gateway: each job's route (local workers or an upstream backend) and its upstream id.

* ``route`` (``'local'`` for every existing row): who claims the job. Local workers claim
  ``route = 'local'``, each upstream backend of :mod:`pixelmill.gateway` its own name.
* ``upstream_id``: the upstream's prediction/request id, written *before* the gateway
  waits on it, so a restarted gateway resumes polling it instead of paying twice.
* ``upstream_cost``: the hosted price incurred (the ledger's actual cost of that job).
* ``shadow_of``: for a shadow run (a sample of a local model's traffic also sent
  upstream to compare cost and time), the local job it shadows; listings leave them out.

``ix_jobs_claim`` becomes ``(status, route, priority DESC, created_at, id)``: every claim
now filters on one route and still walks the index in claim order. Columns are added
with plain ``ALTER TABLE ADD COLUMN`` (no SQLite batch rebuild), so 0005's DESC indexes
survive.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CLAIM_ORDER = [sa.text("priority DESC"), "created_at", "id"]


def upgrade() -> None:
    op.add_column("jobs", sa.Column("route", sa.String(64), nullable=False, server_default="local"))
    op.add_column("jobs", sa.Column("upstream_id", sa.String(255), nullable=True))
    op.add_column("jobs", sa.Column("upstream_cost", sa.Float, nullable=True))
    op.add_column("jobs", sa.Column("shadow_of", sa.String(40), nullable=True))
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["status", "route", *CLAIM_ORDER])


def downgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["status", *CLAIM_ORDER])
    # Jobs routed upstream cannot run on a schema without routes: they end failed.
    op.execute("UPDATE jobs SET status = 'failed', error_code = 'route_removed', "
               "error_message = 'the gateway schema was downgraded' "
               "WHERE route <> 'local' AND status IN ('queued', 'running')")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("shadow_of")
        batch.drop_column("upstream_cost")
        batch.drop_column("upstream_id")
        batch.drop_column("route")
    if op.get_bind().dialect.name == "sqlite":  # the batch rebuild forgets DESC (see 0005)
        op.drop_index("ix_jobs_claim", table_name="jobs")
        op.create_index("ix_jobs_claim", "jobs", ["status", *CLAIM_ORDER])
        for name, first in (("ix_jobs_listing", []), ("ix_jobs_status_listing", ["status"]),
                            ("ix_jobs_key_listing", ["api_key_id"])):
            op.drop_index(name, table_name="jobs")
            op.create_index(name, "jobs", [*first, sa.text("created_at DESC"), sa.text("id DESC")])

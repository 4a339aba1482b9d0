"""Listing pages of the ``jobs`` table: newest first, with an opaque cursor.

Split from :mod:`pixelmill.db.tables` (which re-exports these names) to keep that module
about the table and its row values. Upstream shadow runs (``shadow_of`` set, see
:mod:`pixelmill.gateway`) are comparison jobs of the gateway, not a client's: listings
leave them out.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

import sqlalchemy as sa

from pixelmill.core.errors import InvalidRequest


def after_cursor(cursor: str) -> sa.ColumnElement[bool]:
    """Rows after the cursor's position in newest-first order."""
    from pixelmill.db.tables import jobs  # tables re-exports this module: import at call time
    created_at, job_id = decode_cursor(cursor)
    return sa.or_(
        jobs.c.created_at < created_at,
        sa.and_(jobs.c.created_at == created_at, jobs.c.id < job_id),
    )


def page_query(
    *, status: str | None, since: datetime | None, batch_id: str | None, cursor: str | None, limit: int
) -> sa.Select:
    """Up to ``limit`` jobs after ``cursor``, newest first, filtered by whatever is given."""
    from pixelmill.db.tables import jobs, utc
    stmt = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
    stmt = stmt.where(jobs.c.shadow_of.is_(None))
    if status is not None:
        stmt = stmt.where(jobs.c.status == status)
    if since is not None:
        stmt = stmt.where(jobs.c.created_at >= utc(since))
    if batch_id is not None:
        stmt = stmt.where(jobs.c.batch_id == batch_id)
    return stmt if cursor is None else stmt.where(after_cursor(cursor))


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """An opaque page cursor: the position just after (created_at, id)."""
    from pixelmill.db.tables import utc
    raw = f"{utc(created_at).isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; :class:`InvalidRequest` for anything else."""
    from pixelmill.db.tables import utc
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        return utc(datetime.fromisoformat(stamp)), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(f"invalid page cursor {cursor!r}", param="cursor") from None

"""Result bytes kept in the job database, for deployments with several API hosts.

The part of the directory-backed :class:`~pixelmill.jobs.results.ResultStore` that workers
and the API use (``put_many`` / ``get`` / ``sweep``), so any host can serve a result that
a worker on another host produced. Ids are 192-bit random tokens, unguessable like result
file names.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from pixelmill.core.errors import NotFound
from pixelmill.db.engine import read_transaction, write_transaction
from pixelmill.db.tables import blobs, utc

BLOB_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")


@dataclass(frozen=True)
class StoredResult:
    """A stored result: its bytes (database store) or its file (directory store)."""

    id: str
    media_type: str
    data: bytes | None = None
    path: Path | None = None

    def read(self) -> bytes:
        """The result's bytes, wherever they are kept."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError(f"stored result {self.id} has neither data nor a path")
        return self.path.read_bytes()


class DatabaseResultStore:
    """Keeps results in the ``blobs`` table, each downloadable for ``retention_s`` seconds."""

    def __init__(self, engine: sa.Engine, retention_s: int):
        self.engine = engine
        self.retention_s = retention_s

    def put_many(self, files: list[tuple[bytes, str]]) -> list[str]:
        """Store each ``(data, media_type)`` in one transaction; returns their new unguessable
        32-character ids in order."""
        now = datetime.now(timezone.utc)
        expires = now + timedelta(seconds=self.retention_s)
        rows = [
            {"id": secrets.token_urlsafe(24), "media_type": media_type, "data": data,  # 192 random bits
             "created_at": now, "expires_at": expires}
            for data, media_type in files
        ]
        if rows:
            with write_transaction(self.engine) as conn:
                conn.execute(sa.insert(blobs), rows)
        return [row["id"] for row in rows]

    def get(self, file_id: str) -> StoredResult:
        """The stored result ``file_id``; :class:`NotFound` when unknown or expired."""
        if BLOB_ID.fullmatch(file_id):
            columns = (blobs.c.media_type, blobs.c.data, blobs.c.expires_at)
            stmt = sa.select(*columns).where(blobs.c.id == file_id)
            with read_transaction(self.engine) as conn:
                row = conn.execute(stmt).first()
            # Expired but not yet swept is refused too: expiry must not depend on the sweeper.
            if row is not None and utc(row.expires_at) > datetime.now(timezone.utc):
                return StoredResult(file_id, row.media_type, data=bytes(row.data))
        raise NotFound(f"file {file_id!r} does not exist or has expired", param="file_id")

    def sweep(self, *, now: datetime | None = None) -> int:
        """Delete expired results; returns how many were removed."""
        now = utc(now) if now is not None else datetime.now(timezone.utc)
        with write_transaction(self.engine) as conn:
            return conn.execute(sa.delete(blobs).where(blobs.c.expires_at <= now)).rowcount

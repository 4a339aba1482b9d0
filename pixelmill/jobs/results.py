"""Generated files kept for download (``/v1/files/{id}``) for a retention period.

Single-host default: a local directory. Ids are 192-bit random tokens, so a file
cannot be guessed; the id is the only part of a file name, so nothing a user sends
reaches the filesystem. Expired files are refused at once and swept periodically.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

from pixelmill.core.errors import NotFound
from pixelmill.jobs.blobs import StoredResult

FILE_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
"""Media type → file extension; ``get`` tries these names, most common first."""


class ResultStore:
    """Keeps result files in a directory, each downloadable for ``retention_s`` seconds."""

    def __init__(self, root: Path, retention_s: int):
        self.root = root
        self.retention_s = retention_s

    def put_many(self, files: list[tuple[bytes, str]]) -> list[str]:
        """Store each ``(data, media_type)``; returns their new ids in order."""
        self.root.mkdir(parents=True, exist_ok=True)
        ids = []
        for data, media_type in files:
            file_id = secrets.token_urlsafe(24)  # 24 bytes → 32 URL-safe characters
            path = self.root / f"{file_id}.{EXTENSIONS[media_type]}"
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader never sees half a file
            ids.append(file_id)
        return ids

    def get(self, file_id: str) -> StoredResult:
        """The stored file ``file_id``; :class:`NotFound` when unknown or expired."""
        if FILE_ID.fullmatch(file_id):
            # Addressed directly: at most one stat per known extension, whatever the
            # directory holds (a glob read the whole directory: 6.4 ms at 10,000 files).
            now = time.time()
            for media_type, ext in EXTENSIONS.items():
                path = self.root / f"{file_id}.{ext}"
                if not self._expired(path, now):
                    return StoredResult(file_id, media_type, path=path)
        raise NotFound(f"file {file_id!r} does not exist or has expired", param="file_id")

    def _expired(self, path: Path, now: float) -> bool:
        try:
            return now - path.stat().st_mtime > self.retention_s
        except FileNotFoundError:
            return True

    def sweep(self) -> int:
        """Delete expired files; returns how many were removed."""
        if not self.root.is_dir():
            return 0
        now, removed = time.time(), 0
        for path in self.root.iterdir():
            if self._expired(path, now):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

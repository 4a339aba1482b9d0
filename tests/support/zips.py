"""A synchronous driver of the archive writer, for tests that read whole archives."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pixelmill.jobs.archive import ArchiveEntry, ZipStreamWriter


def iter_zip(entries: Iterable[ArchiveEntry], manifest: dict[str, Any] | None = None) -> Iterator[bytes]:
    """The archive as a stream of chunks (one per entry); ``entries`` is consumed lazily.

    ``manifest`` adds top-level fields to ``manifest.json`` (e.g. ``batch_id``); its
    ``files`` list is always generated. Suitable for Starlette's ``StreamingResponse``,
    which runs synchronous iterators in a thread.
    """
    writer = ZipStreamWriter(manifest)
    for entry in entries:
        yield writer.add(entry)
    yield writer.finish()

"""Result files: unguessable ids, expiry, sweeping."""

from __future__ import annotations

import os
import time

import pytest

from pixelmill.core.errors import NotFound
from pixelmill.jobs.results import ResultStore


def test_put_get_and_expiry(tmp_path):
    store = ResultStore(tmp_path, retention_s=60)
    file_id = store.put_many([(b"png-bytes", "image/png")])[0]
    assert len(file_id) == 32
    stored = store.get(file_id)
    assert stored.path.read_bytes() == b"png-bytes" and stored.media_type == "image/png"
    old = time.time() - 120
    os.utime(stored.path, (old, old))
    with pytest.raises(NotFound):
        store.get(file_id)
    assert store.sweep() == 1
    assert not stored.path.exists()


def test_ids_are_unique_and_paths_never_come_from_users(tmp_path):
    store = ResultStore(tmp_path, retention_s=60)
    ids = {store.put_many([(b"x", "image/webp")])[0] for _ in range(50)}
    assert len(ids) == 50
    for bad in ("../../etc/passwd", "*", "a" * 31, ""):
        with pytest.raises(NotFound):
            store.get(bad)

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



@pytest.mark.parametrize("media_type", ["image/png", "image/jpeg", "image/webp"])
def test_get_addresses_the_file_without_listing_the_directory(tmp_path, monkeypatch, media_type):
    """Lookups stat the id's own names; any directory listing during a lookup fails the test
    (a glob read the whole results directory per download: 6.4 ms at 10,000 files)."""
    import pathlib

    store = ResultStore(tmp_path, retention_s=60)
    ids = store.put_many([(b"a", media_type), (b"b", "image/png")])

    def listing(*args, **kwargs):
        raise AssertionError("a lookup listed the results directory")

    for name in ("glob", "iterdir", "rglob"):
        monkeypatch.setattr(pathlib.Path, name, listing)
    monkeypatch.setattr(os, "scandir", listing)
    monkeypatch.setattr(os, "listdir", listing)
    stored = store.get(ids[0])
    assert stored.media_type == media_type and stored.path.read_bytes() == b"a"
    assert store.get(ids[1]).path.read_bytes() == b"b"
    with pytest.raises(NotFound):
        store.get("x" * 32)

"""Issue 19 §7 pieces that need no server: the id shapes the API edge accepts, and the
model cache refusing a refiner before it frees anything. HTTP cases are in
``tests/integration/test_hostile_inputs.py``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from pixelmill.api import params
from pixelmill.core.errors import InvalidRequest, NotFound
from pixelmill.db.tables import encode_cursor, new_batch_id, new_job_id
from pixelmill.engine.model_cache import ModelCache
from pixelmill.engine.models import ModelSource
from pixelmill.jobs.blobs import BLOB_ID
from pixelmill.jobs.results import FILE_ID, ResultStore

# --- id shapes: the patterns must accept every id the server makes -------------------------


def test_every_id_the_server_makes_has_the_accepted_shape(tmp_path):
    for _ in range(500):
        assert params.job_id_param(job_id := new_job_id()) == job_id
        assert params.batch_id_param(batch_id := new_batch_id()) == batch_id
    file_ids = ResultStore(tmp_path, 60).put_many([(b"x", "image/png")] * 50)
    assert all(params.file_id_param(file_id) == file_id for file_id in file_ids)
    assert BLOB_ID.pattern == FILE_ID.pattern  # database results share the file id shape


def test_every_cursor_the_server_makes_is_accepted():
    now = datetime.now(timezone.utc)
    west = timezone(timedelta(hours=-9))
    for stamp in (now, now - timedelta(days=9000), datetime(2026, 1, 1, tzinfo=west)):
        cursor = encode_cursor(stamp, new_job_id())
        assert params.page_cursor_param(cursor) == cursor
    assert params.page_cursor_param(None) is None


@pytest.mark.parametrize(("check", "value", "param"), [
    (params.job_id_param, "job_" + "a" * 21 + "\x00", "job_id"),
    (params.job_id_param, "batch_" + "a" * 22, "job_id"),
    (params.batch_id_param, "job_" + "a" * 22, "batch_id"),
    (params.file_id_param, "A" * 33, "file_id"),
    (params.key_ref_param, "team\x00a", "key_id"),
])
def test_a_malformed_id_is_not_found(check, value, param):
    with pytest.raises(NotFound) as caught:
        check(value)
    assert caught.value.param == param and "\x00" not in caught.value.message


def test_a_huge_id_is_not_echoed_whole():
    with pytest.raises(NotFound) as caught:
        params.job_id_param("x" * 100_000)
    assert len(caught.value.message) < 200


def test_key_references_are_ids_or_names():
    assert params.key_ref_param("key_0123456789ab") == "key_0123456789ab"
    assert params.key_ref_param("team a") == "team a"


@pytest.mark.parametrize("since", [datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
                                   datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))])
def test_a_since_beyond_utc_is_invalid(since):
    with pytest.raises(InvalidRequest) as caught:
        params.since_param(since)
    assert caught.value.param == "since"


# --- the model cache: a refiner never evicts the model in use ----------------------------------


class _Loaded:
    """Just enough of LoadedModel for the cache's bookkeeping."""

    def __init__(self, source: ModelSource):
        self.source, self.nbytes, self.closed = source, 10, False
        self.pipes = SimpleNamespace(cfg=None)

    def close(self) -> None:
        self.closed = True


def _folder(root: Path, name: str, text_encoder) -> ModelSource:
    path = root / name
    path.mkdir()
    index = {"text_encoder": text_encoder, "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
    (path / "model_index.json").write_text(json.dumps(index))
    return ModelSource(name, "folder", str(path))


def test_the_cache_refuses_a_refiner_before_freeing_anything(tmp_path, monkeypatch):
    monkeypatch.setattr("pixelmill.engine.memory.free_memory", lambda cfg: None)  # no pipelines to free
    base = _folder(tmp_path, "base", ["transformers", "CLIPTextModel"])
    refiner = _folder(tmp_path, "refiner", [None, None])
    loads = []
    cache = ModelCache(0, lambda source: loads.append(source) or _Loaded(source), lambda source: 10)
    loaded = cache.get(base)
    with pytest.raises(InvalidRequest, match="refiner") as caught:
        cache.get(refiner)
    assert caught.value.param == "model"
    assert cache.loaded == [base] and loads == [base] and not loaded.closed

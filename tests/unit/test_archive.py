"""Streaming ZIP of a batch: valid archives, a correct manifest, flat memory, safe names."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import tracemalloc
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from pixelmill.core.types import ControlSpec, GenerationRequest, JobRecord, JobStatus, Mode
from pixelmill.core.errors import NotFound
from tests.support.zips import iter_zip
from pixelmill.jobs.archive import (
    MANIFEST_NAME,
    ArchiveEntry,
    ZipStreamWriter,
    entry_name,
    job_entries,
    zip_stream,
)
from pixelmill.jobs.results import ResultStore


def entries(count: int, size: int = 1000):
    """A lazy batch: each image's bytes are made only when the archive asks for them."""
    for index in range(1, count + 1):
        seed = 1000 + index
        yield ArchiveEntry(
            name=entry_name(index, f"job_{index % 3}", seed, "png"),
            data=os.urandom(size),
            job_id=f"job_{index % 3}",
            prompt=f"a lighthouse, take {index}",
            negative_prompt="blurry",
            seed=seed,
            parameters={"steps": 2, "width": 64, "height": 64, "model": "demo"},
        )


def collect(chunks) -> bytes:
    return b"".join(chunks)


def unzip_test(path) -> None:
    if shutil.which("unzip"):
        run = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_archive_opens_with_all_entries_and_a_correct_manifest(tmp_path):
    batch = list(entries(5))
    data = collect(iter_zip(iter(batch), {"batch_id": "batch_1", "files": "ignored"}))
    path = tmp_path / "batch.zip"
    path.write_bytes(data)
    unzip_test(path)

    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    assert archive.namelist() == [entry.name for entry in batch] + [MANIFEST_NAME]
    for entry in batch:
        info = archive.getinfo(entry.name)
        assert archive.read(entry.name) == entry.data
        assert info.compress_type == zipfile.ZIP_STORED  # images are already compressed
        assert not info.flag_bits & 0x08  # real sizes in local headers: no data descriptors
    assert archive.getinfo(MANIFEST_NAME).compress_type == zipfile.ZIP_DEFLATED

    manifest = json.loads(archive.read(MANIFEST_NAME))
    assert manifest["format"] == "pixelmill-batch/1" and manifest["batch_id"] == "batch_1"
    assert manifest["count"] == 5
    for item, entry in zip(manifest["files"], batch, strict=True):
        assert item == {
            "file": entry.name, "job_id": entry.job_id, "prompt": entry.prompt,
            "negative_prompt": "blurry", "seed": entry.seed, "parameters": entry.parameters,
            "size": len(entry.data), "sha256": hashlib.sha256(entry.data).hexdigest(),
        }


def test_async_stream_from_sync_and_async_sources():
    batch = list(entries(4))

    async def from_async():
        for entry in batch:
            yield entry

    async def run(source):
        return collect([chunk async for chunk in zip_stream(source)])

    for source in (iter(batch), from_async()):
        archive = zipfile.ZipFile(io.BytesIO(asyncio.run(run(source))))
        assert archive.namelist()[:-1] == [entry.name for entry in batch]
        assert archive.read(batch[2].name) == batch[2].data


def test_empty_batch_still_has_a_manifest():
    archive = zipfile.ZipFile(io.BytesIO(collect(iter_zip([]))))
    assert archive.namelist() == [MANIFEST_NAME]
    assert json.loads(archive.read(MANIFEST_NAME))["files"] == []


def test_chunks_come_one_per_entry_not_all_at_the_end():
    sizes = [len(chunk) for chunk in iter_zip(entries(3, size=20_000))]
    assert len(sizes) == 4
    assert all(20_000 < size < 20_200 for size in sizes[:3])  # image + its local header


@pytest.mark.parametrize("use_async", [False, True], ids=["iter_zip", "zip_stream"])
def test_thousand_images_stream_with_flat_memory(tmp_path, use_async):
    """~50 MB of output; traced memory must stay far below that."""
    path = tmp_path / "big.zip"
    total = 0
    tracemalloc.start()
    try:
        with open(path, "wb") as out:
            if use_async:
                async def drain():
                    written = 0
                    async for chunk in zip_stream(entries(1000, size=50_000)):
                        written += out.write(chunk)
                    return written

                total = asyncio.run(drain())
            else:
                for chunk in iter_zip(entries(1000, size=50_000)):
                    total += out.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 50_000_000
    assert peak < 5_000_000, f"peak traced memory {peak / 1e6:.1f} MB"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert len(names) == 1001 and len(set(names)) == 1001
        assert len(json.loads(archive.read(MANIFEST_NAME))["files"]) == 1000
    unzip_test(path)


def test_zip64_is_used_when_limits_are_crossed(tmp_path, monkeypatch):
    """Lower zipfile's 4 GiB limit so a small archive needs ZIP64 records, as a huge batch would."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 4096)
    batch = list(entries(4, size=10_000))
    data = collect(iter_zip(iter(batch)))
    monkeypatch.undo()
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert all(info.extract_version >= zipfile.ZIP64_VERSION for info in archive.infolist())
    assert archive.read(batch[-1].name) == batch[-1].data
    path = tmp_path / "zip64.zip"
    path.write_bytes(data)
    unzip_test(path)


def test_generated_names_are_safe_and_unique():
    names = {entry_name(i, "job_../../etc/passwd", 42, "png") for i in range(1, 1001)}
    assert len(names) == 1000
    for name in names:
        assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert entry_name(7, "job_abc", 42, "png") == "0007-job_abc-seed42.png"
    assert entry_name(12345, "job/ä", 1, ".we/bp") == "12345-job__-seed1.webp"


UNSAFE = ["../evil.png", "/abs.png", ".hidden", "a/b.png", "a\\b.png", "", MANIFEST_NAME, "x" * 300]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_refused(name):
    writer = ZipStreamWriter()
    with pytest.raises(ValueError):
        writer.add(ArchiveEntry(name=name, data=b"x", job_id="j", prompt="p", seed=1))


def test_duplicate_names_are_refused():
    writer = ZipStreamWriter()
    entry = ArchiveEntry(name="0001-j-seed1.png", data=b"x", job_id="j", prompt="p", seed=1)
    writer.add(entry)
    with pytest.raises(ValueError, match="duplicate"):
        writer.add(entry)


def _job(job_id: str, file_ids: list[str], seeds: list[int]) -> JobRecord:
    request = GenerationRequest(
        prompt=f"prompt of {job_id}", negative_prompt="ugly", seed=seeds[0], steps=2,
        init_image=b"\x89PNG...", controlnets=(ControlSpec(name="canny", image=b"\x89PNG..."),),
        mode=Mode.img2img,
    )
    return JobRecord(
        id=job_id, status=JobStatus.succeeded, request=request, created_at=datetime.now(timezone.utc),
        mode=Mode.img2img, steps=2, result_ids=file_ids, result_seeds=seeds,
    )


def test_job_entries_read_stored_results_and_skip_missing_ones(tmp_path):
    store = ResultStore(tmp_path, retention_s=60)
    first = [store.put_many([(b"png-1", "image/png")])[0], store.put_many([(b"png-2", "image/png")])[0]]
    second = [store.put_many([(b"webp-3", "image/webp")])[0], "x" * 32]  # the second file is gone
    jobs = [_job("job_one", first, [5, 6]), _job("job_two", second, [9, 10])]

    batch = list(job_entries(jobs, store))
    names = ["0001-job_one-seed5.png", "0002-job_one-seed6.png", "0003-job_two-seed9.webp"]
    assert [e.name for e in batch] == names
    assert [e.data for e in batch] == [b"png-1", b"png-2", b"webp-3"]
    assert batch[2].prompt == "prompt of job_two" and batch[2].negative_prompt == "ugly"
    params = batch[0].parameters
    assert params["steps"] == 2 and params["mode"] == "img2img"
    assert "init_image" not in params and "prompt" not in params
    control = {"name": "canny", "scale": 1.0, "start": 0.0, "end": 1.0, "preprocess": "none"}
    assert params["controlnets"] == [control]
    json.dumps(params)  # the manifest must be able to hold it


@dataclass(frozen=True)
class _InMemoryResult:
    media_type: str
    data: bytes

    def read(self) -> bytes:
        return self.data


class _InMemoryResults:
    """Shaped like the database-backed result store: results carry bytes, not paths."""

    def __init__(self, blobs: dict[str, _InMemoryResult]):
        self.blobs = blobs

    def get(self, file_id: str) -> _InMemoryResult:
        if file_id not in self.blobs:
            raise NotFound("gone", param="file_id")
        return self.blobs[file_id]


def test_job_entries_work_with_results_that_have_no_path():
    store = _InMemoryResults({"a" * 32: _InMemoryResult("image/jpeg", b"jpeg-bytes")})
    batch = list(job_entries([_job("job_db", ["a" * 32, "b" * 32], [3, 4])], store))
    assert [(e.name, e.data) for e in batch] == [("0001-job_db-seed3.jpg", b"jpeg-bytes")]

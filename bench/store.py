"""Job-store latency with input images waiting in the queue: claim, list and get.

``python -m bench.store`` fills two queues per backend with the same img2img requests
(1024×1024, one batch key, as the request policy leaves them), one *with* a 1024×1024
init image per job and one *without* (the baseline), and times on each, at 10, 1,000
and 10,000 queued jobs:

* ``claim``: the worker's call, ``claim(limit=4, batch_key=batch_key)`` (the claimed
  jobs are released back untimed, so the queue keeps its size and order);
* ``list``: the first page of ``GET /v1/jobs`` (``list_jobs(limit=50)``);
* ``get``: ``GET /v1/jobs/{id}`` of a random queued job.

Baseline and images take turns, repetition after repetition (the order alternates), and
each reported ratio is the median (and interquartile range) of the per-repetition
ratios images ÷ baseline: 1.0 means the images cost nothing. A claim must still load
the images of the jobs it takes, so its ratio includes reading 4 images.

Images: a smooth RGB gradient (18.8 KB as PNG, far more compressible than a photo),
made distinct per job by a PNG text chunk so that no store can share one copy. An
extra row with a photo-sized image (the gradient plus ±2 noise: 1.26 MB, what an
uploaded photo weighs) shows how the cost grows with image bytes; it runs at 100 jobs
only, to keep the run short. Runs on any commit with the same store API (pass
``PYTHONPATH`` to measure another work tree); prints which code it measured.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import secrets
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import pixelmill
from pixelmill.core.batching import batch_key
from pixelmill.core.types import GenerationRequest, Mode
from pixelmill.jobs.store import JobStore
from bench.machine import loadavg
from bench.stats import median, percentile

ADMIN_URL = os.environ.get("PIXELMILL_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
SIDE = 1024
CLAIM_LIMIT = 4  # Settings.max_batch_size's default
PAGE = 50  # GET /v1/jobs's default limit
SUBMIT_CHUNK = 250
OPS = ("claim", "list", "get")


def gradient_png(noise: int = 0) -> bytes:
    """A smooth 1024×1024 RGB gradient as PNG; ``noise`` adds ±noise per channel (photo-like)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    rgb = np.stack([x * 255 // (SIDE - 1), y * 255 // (SIDE - 1), (x + y) * 255 // (2 * SIDE - 2)], axis=-1)
    if noise:
        rgb = rgb + np.random.default_rng(0).integers(-noise, noise + 1, rgb.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def distinct(png: bytes, index: int) -> bytes:
    """``png`` with a ``tEXt`` chunk naming ``index`` before IEND: same pixels, other bytes."""
    data = b"pixelmill-bench\x00" + str(index).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:-12] + chunk + png[-12:]  # the last 12 bytes are the IEND chunk


def request(index: int, image: bytes | None) -> GenerationRequest:
    """Job ``index`` of a queue: all share one batch key; only the prompt (and image) differ."""
    return GenerationRequest(
        prompt=f"bench job {index}", mode=Mode.img2img, width=SIDE, height=SIDE, steps=30, guidance=5.0,
        strength=0.75, mask_blur=4, init_image=None if image is None else distinct(image, index),
    )


@dataclass
class Queue:
    """One store and how many jobs it holds."""

    store: JobStore
    image: bytes | None
    ids: list[str] = field(default_factory=list)

    def fill(self, size: int) -> None:
        """Submit jobs until ``size`` are queued."""
        while len(self.ids) < size:
            count = min(SUBMIT_CHUNK, size - len(self.ids))
            requests = [request(len(self.ids) + i, self.image) for i in range(count)]
            self.ids += [job.id for job in self.store.submit_batch(requests)[1]]

    def run(self, op: str, rng: random.Random) -> float:
        """Seconds one ``op`` took (a claim's jobs are released afterwards, untimed)."""
        store = self.store
        calls: dict[str, Callable[[], object]] = {
            "claim": lambda: store.claim("bench", lease_s=600, limit=CLAIM_LIMIT, batch_key=batch_key),
            "list": lambda: store.list_jobs(limit=PAGE),
            "get": lambda: store.get(rng.choice(self.ids)),
        }
        start = time.perf_counter()
        answer = calls[op]()
        elapsed = time.perf_counter() - start
        if op == "claim":
            assert len(answer) == CLAIM_LIMIT, f"claimed {len(answer)} jobs"
            assert (answer[0].request.init_image is None) == (self.image is None), "images not loaded"
            for job in answer:
                store.release(job.id, "bench", job.attempt)
        return elapsed


@dataclass
class Row:
    """One (backend, queue size, image, op) measurement: seconds per repetition, both queues."""

    backend: str
    size: int
    image: str
    op: str
    baseline: list[float] = field(default_factory=list)
    images: list[float] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [i / b for b, i in zip(self.baseline, self.images)]

    def cells(self) -> list[str]:
        return [self.backend, f"{self.size:,}", self.image, self.op, spread(self.baseline, 1000, "ms"),
                spread(self.images, 1000, "ms"), spread(self.ratios(), 1, "×")]


def spread(values: list[float], scale: float, unit: str) -> str:
    """``median (p25–p75)`` of ``values`` × ``scale``."""
    low, high = percentile(values, 25) * scale, percentile(values, 75) * scale
    digits = 2 if unit == "×" else 1 if median(values) * scale < 100 else 0
    return f"{median(values) * scale:.{digits}f} ({low:.{digits}f}–{high:.{digits}f}) {unit}"


def measure(baseline: Queue, images: Queue, row_of: Callable[[str], Row], repeats: int, seed: int) -> None:
    """Time every op ``repeats`` times on both queues, in turns, appending to the rows."""
    rng = random.Random(seed)
    for queue in (baseline, images):  # warm caches and connection pools: not measured
        for op in OPS:
            queue.run(op, rng)
    for repetition in range(repeats):
        for op in OPS:
            row = row_of(op)
            order = [(baseline, row.baseline), (images, row.images)]
            for queue, times in order if repetition % 2 == 0 else order[::-1]:
                times.append(queue.run(op, rng))


def settle(store: JobStore) -> None:
    """Finish the maintenance a bulk fill causes, so that it does not run while measuring.

    PostgreSQL: VACUUM ANALYZE (autovacuum would otherwise scan the freshly written
    images database in the middle of the measurement); SQLite: checkpoint the WAL.
    """
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        else:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


@contextmanager
def databases(backend: str, directory: Path) -> Iterator[tuple[str, str]]:
    """URLs of two empty databases (baseline, images) of ``backend``, removed afterwards."""
    if backend == "sqlite":
        yield str(directory / "baseline.db"), str(directory / "images.db")
        return
    import psycopg

    names = [f"pixelmill_bench_{secrets.token_hex(4)}" for _ in range(2)]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rpartition("/")[0]
    try:
        yield tuple(f"{base}/{name}" for name in names)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_backend(backend: str, sizes: list[int], photo_size: int, repeats: int) -> list[Row]:
    """Every row of one backend: the gradient at each size, then the photo at ``photo_size``."""
    rows: list[Row] = []
    cases = [("gradient 18.8 KB", gradient_png(), sizes)]
    if photo_size:
        cases.append(("photo 1.26 MB", gradient_png(noise=2), [photo_size]))
    for label, png, case_sizes in cases:
        with tempfile.TemporaryDirectory(prefix="pm-bench-") as tmp, databases(backend, Path(tmp)) as urls:
            stores = [JobStore.open(url) for url in urls]
            baseline, images = Queue(stores[0], None), Queue(stores[1], png)
            try:
                for size in case_sizes:
                    started = time.perf_counter()
                    for queue in (baseline, images):
                        queue.fill(size)
                        settle(queue.store)
                    filled = time.perf_counter() - started
                    fresh = {op: Row(backend, size, label, op) for op in OPS}
                    measure(baseline, images, fresh.__getitem__, repeats, seed=size)
                    rows += fresh.values()
                    print(f"  {backend} {label} {size:>6,} jobs (filled in {filled:.1f} s):", flush=True)
                    for op in OPS:
                        print("    " + " | ".join(fresh[op].cells()[3:]), flush=True)
            finally:
                for store in stores:
                    store.engine.dispose()
    return rows


def code() -> str:
    """Which pixelmill was measured: its directory and commit (+ whether it has local changes)."""
    root = Path(pixelmill.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "pixelmill")
    return f"{root} at {git('rev-parse', '--short', 'HEAD')}{' + local changes' if dirty else ''}"


def versions() -> str:
    import sqlite3

    import psycopg
    import pydantic
    import sqlalchemy

    return (f"Python {sys.version.split()[0]}, SQLAlchemy {sqlalchemy.__version__}, "
            f"pydantic {pydantic.__version__}, psycopg {psycopg.__version__}, SQLite {sqlite3.sqlite_version}")


def markdown(rows: list[Row]) -> str:
    head = ["backend", "queued", "input image", "op", "no images, ms", "with images, ms", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row.cells()) + " |" for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000", help="queue sizes (comma-separated)")
    parser.add_argument("--photo-size", type=int, default=100, help="queue size of the photo row (0: none)")
    parser.add_argument("--repeats", type=int, default=25, help="timed repetitions of each op")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"code: {code()}\nload: {loadavg()}\n{versions()}", flush=True)
    started, rows = time.perf_counter(), []
    for backend in args.backends.split(","):
        rows += run_backend(backend, sizes, args.photo_size, args.repeats)
    print(f"\n{markdown(rows)}\n\ntook {time.perf_counter() - started:.0f} s; load {loadavg()}")


if __name__ == "__main__":
    main()

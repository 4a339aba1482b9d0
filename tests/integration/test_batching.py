"""Dynamic batching in a real worker process: shared calls, same images, fair shares."""

from __future__ import annotations

import base64
import time
from datetime import datetime
from pathlib import Path

import httpx

from tests.integration.test_durability import FAST_LEASE, submit, wait_all
from tests.support.images import assert_same_image, decode
from tests.support.server import ServerProcess, WorkerProcess


def fleet(tmp_path: Path, demo_models: Path, *worker_flags: str):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    api = ServerProcess(tmp_path, "--workers", "0", "--db", db, *FAST_LEASE).start()
    args = ("--db", db, "--models-dir", str(demo_models), "--model", "demo", *FAST_LEASE, *worker_flags)
    return api, WorkerProcess(tmp_path / "worker", *args)


def test_compatible_jobs_share_a_call_and_match_their_unbatched_images(server, demo_models, tmp_path):
    api, worker = fleet(tmp_path, demo_models, "--max-batch-size", "4")
    try:
        bodies = [{"prompt": f"prompt {i}", "seed": 100 + i, "negative_prompt": "blurry"} for i in range(4)]
        ids = [submit(api.url, **body) for body in bodies]
        odd_one = submit(api.url, steps=3)  # another step count: never in the same call
        worker.start()
        jobs = wait_all(api.url, [*ids, odd_one])
        assert {job["status"] for job in jobs} == {"succeeded"}
        batch, alone = jobs[:4], jobs[4]
        assert len({job["started_at"] for job in batch}) == 1  # claimed and run together
        assert alone["started_at"] != batch[0]["started_at"]
        shares = [job["gpu_seconds"] for job in batch]
        assert max(shares) - min(shares) < 1e-6  # one image each: equal shares of the call
        for body, job in zip(bodies, batch):
            single = httpx.post(  # the session server runs each synchronous call on its own
                f"{server.url}/v1/generate",
                json={"width": 128, "height": 128, "steps": 4} | body, timeout=60,
            ).json()
            download = httpx.get(job["results"][0]["url"])
            assert download.status_code == 200, (job["results"], download.text)
            batched = decode(download.content)
            assert_same_image(batched, decode(base64.b64decode(single["images"][0]["b64_json"])))
    finally:
        worker.stop()
        api.stop()


def test_canceling_one_job_of_a_batch_keeps_the_others(demo_models, tmp_path):
    api, worker = fleet(tmp_path, demo_models, "--max-batch-size", "3")
    try:
        # Long enough that the cancel lands mid-batch (each step checks it), short enough to be cheap.
        ids = [submit(api.url, seed=i, steps=40, width=128, height=128) for i in range(3)]
        worker.start()
        deadline = time.monotonic() + 60
        while not all(httpx.get(f"{api.url}/v1/jobs/{i}").json()["status"] == "running" for i in ids):
            assert time.monotonic() < deadline, "the batch never started"
            time.sleep(0.05)
        httpx.post(f"{api.url}/v1/jobs/{ids[1]}/cancel")
        jobs = wait_all(api.url, ids)
        assert [job["status"] for job in jobs] == ["succeeded", "canceled", "succeeded"]
        assert jobs[1]["results"] == [] and len(jobs[0]["results"]) == 1
    finally:
        worker.stop()
        api.stop()


def idle_while_claimed(job: dict) -> float:
    """Seconds a claimed job spent not generating: the batch wait, plus storing its image."""
    running = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
    return running.total_seconds() - job["gpu_seconds"]


def test_jobs_arriving_one_at_a_time_start_without_waiting_for_company(demo_models, tmp_path):
    # A 0.2 s batch wait makes the difference measurable; arrivals 1.5 s apart are "well apart"
    # (more than 5 waits: 1 s) with room for a loaded machine's jitter in created_at. The
    # first job has no history and waits; the fifth has four gaps behind it (the sample).
    server = ServerProcess(tmp_path, "--models-dir", str(demo_models), "--model", "demo",
                           "--max-batch-wait-ms", "200").start()
    try:
        waits = []
        for i in range(5):
            sent = time.monotonic()
            job = wait_all(server.url, [submit(server.url, seed=i, width=64, height=64, steps=2)])[0]
            waits.append(idle_while_claimed(job))
            time.sleep(max(0.0, sent + 1.5 - time.monotonic()))
        assert waits[0] >= 0.19, waits  # no history yet: a burst may be starting
        assert waits[4] < 0.15, waits  # four gaps of 1.5 s: nothing joins, start at once
    finally:
        server.stop()

"""Dynamic batching in a real worker process: shared calls, same images, fair shares."""

from __future__ import annotations

import base64
import time
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
        ids = [submit(api.url, seed=i, steps=30, width=256, height=256) for i in range(3)]
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

"""Load at twice the queue's capacity against a real server on loopback.

An API-only server (``--workers 0``, ``--max-queued 10``) takes a burst of 20 concurrent
submissions while a poller watches the queue: no 5xx, every 429 carries Retry-After, the
queue never holds more than 10 jobs. Then a worker starts and every accepted job must
finish. Bounded: one burst, fixed counts, a deadline on every wait.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.support.server import ServerProcess, WorkerProcess

MAX_QUEUED = 10
BURST = 2 * MAX_QUEUED
JOB = {"prompt": "load", "width": 64, "height": 64, "steps": 1}


async def _burst(url: str) -> tuple[list[httpx.Response], list[int]]:
    depths: list[int] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def poll() -> None:
            while not done.is_set():
                listed = await client.get("/v1/jobs", params={"status": "queued", "limit": 200})
                depths.append(len(listed.json()["data"]))
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll())
        submits = (client.post("/v1/jobs", json=JOB | {"seed": i}) for i in range(BURST))
        responses = await asyncio.gather(*submits)
        done.set()
        await poller
        final = await client.get("/v1/jobs", params={"status": "queued", "limit": 200})
        depths.append(len(final.json()["data"]))
    return list(responses), depths


def _wait_finished(url: str, ids: list[str], timeout: float = 120) -> dict[str, str]:
    deadline, states = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        states = {i: httpx.get(f"{url}/v1/jobs/{i}", timeout=10).json()["status"] for i in ids}
        if all(state in ("succeeded", "failed", "canceled") for state in states.values()):
            break
        time.sleep(0.1)
    return states


def test_twice_the_queue_capacity(demo_models: Path, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    api = ServerProcess(tmp_path, "--workers", "0", "--db", db, "--max-queued", str(MAX_QUEUED)).start()
    worker = None
    try:
        responses, depths = asyncio.run(_burst(api.url))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {202, 429} and statuses.count(202) == MAX_QUEUED, statuses
        assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
        assert max(depths) <= MAX_QUEUED and depths[-1] == MAX_QUEUED
        accepted = [r.json()["id"] for r in responses if r.status_code == 202]

        model = ("--models-dir", str(demo_models), "--model", "demo")
        worker = WorkerProcess(tmp_path / "worker", "--db", db, *model)
        worker.start()
        states = _wait_finished(api.url, accepted)
        assert list(states.values()) == ["succeeded"] * MAX_QUEUED, states
    finally:
        if worker:
            worker.stop()
        api.stop()

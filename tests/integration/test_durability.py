"""Crashes lose no accepted job: real processes, kill -9, real SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.images import decode
from tests.support.postgres import pg_url  # noqa: F401 - fixture
from tests.support.server import ServerProcess, WorkerProcess, subprocess_env

FAST_LEASE = ("--lease-s", "4", "--heartbeat-s", "0.5", "--poll-interval-s", "0.1")
"""Short leases so crash tests finish quickly, long enough to survive a loaded CI machine."""


def submit(url: str, **fields) -> str:
    body = {"prompt": "durable", "width": 128, "height": 128, "steps": 4} | fields
    response = httpx.post(f"{url}/v1/jobs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_all(url: str, ids: list[str], timeout: float = 180, statuses=("succeeded", "failed", "canceled")) -> list[dict]:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    jobs: dict[str, dict] = {}
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
            if job["status"] in statuses:
                jobs[job_id] = job
                pending.discard(job_id)
        time.sleep(0.1)
    assert not pending, f"{len(pending)} jobs never finished"
    return [jobs[job_id] for job_id in ids]


def wait_running(url: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if job["status"] == "running" and (job.get("progress") or {}).get("step", 0) >= 1:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never started running")


def test_server_killed_with_queued_jobs_finishes_them_after_restart(demo_models: Path, tmp_path: Path):
    args = ("--models-dir", str(demo_models), "--model", "demo", *FAST_LEASE)
    first = ServerProcess(tmp_path, *args).start()
    try:
        # A long first job (another batch key: it runs alone) is still running when the
        # last of the others is queued, however fast this machine makes the short ones.
        # The others only need to be queued at the kill, so they are short; the long one runs
        # again in full after the restart, so it is long in steps but small in pixels.
        ids = [submit(first.url, seed=0, steps=150, width=192, height=192)]
        ids += [submit(first.url, seed=i, steps=4) for i in range(1, 20)]
        wait_running(first.url, ids[0])
    finally:
        first.kill()  # kill -9 with one job running and the rest queued
    states = _statuses(tmp_path / "data" / "pixelmill.db", ids)
    assert states.count("queued") >= 15 and "running" in states

    second = ServerProcess(tmp_path, *args).start()
    try:
        jobs = wait_all(second.url, ids)
        assert [job["status"] for job in jobs] == ["succeeded"] * 20
        assert max(job["attempt"] for job in jobs) <= 2  # the job running at the kill ran again
        assert decode(httpx.get(jobs[0]["results"][0]["url"]).content).size == (192, 192)
        assert decode(httpx.get(jobs[-1]["results"][0]["url"]).content).size == (128, 128)
    finally:
        second.stop()


def _statuses(db: Path, ids: list[str]) -> list[str]:
    """Job states straight from the SQLite file the killed server left behind."""
    import sqlite3

    with sqlite3.connect(db) as connection:
        rows = dict(connection.execute("SELECT id, status FROM jobs").fetchall())
    return [rows[job_id] for job_id in ids]


def test_worker_killed_mid_job_another_worker_finishes_it(demo_models: Path, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    api = ServerProcess(tmp_path, "--workers", "0", "--db", db, *FAST_LEASE).start()
    worker_args = ("--db", db, "--models-dir", str(demo_models), "--model", "demo", *FAST_LEASE)
    doomed = WorkerProcess(tmp_path / "a", *worker_args).start().wait_ready()
    rescuer = WorkerProcess(tmp_path / "b", *worker_args)
    try:
        # Long enough to be killed while running; the rescuer runs it again in full.
        job_id = submit(api.url, steps=40, width=256, height=256)
        running = wait_running(api.url, job_id)
        doomed.kill()
        rescuer.start()
        job = wait_all(api.url, [job_id], timeout=120)[0]
        assert job["status"] == "succeeded"
        assert job["attempt"] == 2 and job["worker"] != running["worker"]
        assert rescuer.stop() == 0  # SIGTERM: a clean exit
    finally:
        doomed.kill()
        rescuer.kill()
        api.stop()


def test_a_job_that_crashes_every_worker_fails_after_max_attempts(tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    api = ServerProcess(tmp_path, "--workers", "0", "--db", db, "--max-attempts", "2", *FAST_LEASE).start()
    try:
        job_id = submit(api.url)
        env = subprocess_env(
            PIXELMILL_DB=db, PIXELMILL_LEASE_S="4", PIXELMILL_HEARTBEAT_S="0.5",
            PIXELMILL_POLL_INTERVAL_S="0.1", PIXELMILL_DATA_DIR=str(tmp_path / "fake"),
            PYTHONPATH=str(Path(__file__).resolve().parents[2]),  # so tests.fakes imports from any cwd
        )
        for attempt in (1, 2):
            fake = WorkerProcess(tmp_path / f"fake{attempt}", module="tests.fakes.crash_mid_job", env=env).start()
            fake.process.wait(timeout=60)
            assert fake.process.returncode == 137, fake.log()
            assert httpx.get(f"{api.url}/v1/jobs/{job_id}").json()["attempt"] == attempt
        job = wait_all(api.url, [job_id], timeout=30)[0]
        assert job["status"] == "failed"
        assert job["error"]["code"] == "worker_lost"
    finally:
        api.stop()


def test_postgres_fleet_api_host_and_two_workers(demo_models: Path, tmp_path: Path, pg_url: str):  # noqa: F811
    (tmp_path / "api").mkdir()
    api = ServerProcess(tmp_path / "api", "--workers", "0", "--db", pg_url, *FAST_LEASE).start()
    worker_args = ("--db", pg_url, "--models-dir", str(demo_models), "--model", "demo", *FAST_LEASE)
    workers = [WorkerProcess(tmp_path / f"host{i}", *worker_args).start() for i in (1, 2)]
    try:
        for worker in workers:
            worker.wait_ready()
        ids = [submit(api.url, seed=i, steps=8) for i in range(12)]
        jobs = wait_all(api.url, ids)
        assert [job["status"] for job in jobs] == ["succeeded"] * 12
        assert [job["attempt"] for job in jobs] == [1] * 12  # each ran exactly once
        assert len({job["worker"] for job in jobs}) == 2  # both workers took part
        for job in jobs:  # results come from the database, through the API host
            image = httpx.get(job["results"][0]["url"])
            assert image.status_code == 200 and decode(image.content).size == (128, 128)
        assert not any((tmp_path / f"host{i}" / "data" / "results").exists() for i in (1, 2))
    finally:
        for worker in workers:
            worker.stop()
        api.stop()


def test_sigterm_finishes_the_running_job_twice_releases_it(demo_models: Path, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    api = ServerProcess(tmp_path, "--workers", "0", "--db", db, *FAST_LEASE).start()
    worker_args = ("--db", db, "--models-dir", str(demo_models), "--model", "demo", *FAST_LEASE)
    graceful = WorkerProcess(tmp_path / "a", *worker_args)
    impatient = WorkerProcess(tmp_path / "b", *worker_args)
    try:
        graceful.start().wait_ready()
        first = submit(api.url, steps=20, width=256, height=256)
        wait_running(api.url, first)
        graceful.process.terminate()  # one SIGTERM: finish the job, then exit
        assert graceful.process.wait(timeout=60) == 0
        job = httpx.get(f"{api.url}/v1/jobs/{first}").json()
        assert (job["status"], job["attempt"]) == ("succeeded", 1)

        impatient.start().wait_ready()
        second = submit(api.url, steps=150, width=256, height=256)
        wait_running(api.url, second)
        impatient.process.terminate()
        time.sleep(0.3)
        impatient.process.terminate()  # a second SIGTERM: release the job now
        assert impatient.process.wait(timeout=30) == 0
        job = httpx.get(f"{api.url}/v1/jobs/{second}").json()
        assert (job["status"], job["attempt"]) == ("queued", 0)  # a release is not a failed attempt
    finally:
        graceful.kill()
        impatient.kill()
        api.stop()

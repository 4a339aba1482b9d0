"""Job claims from several real processes against one database: each job claimed once.

PostgreSQL is the multi-host deployment (skipped with a reason when no server is
reachable, a failure under CI=true); the SQLite variant is several worker processes on
one host sharing one database file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pixelmill.core.types import GenerationRequest, JobStatus
from pixelmill.jobs.store import JobStore
from tests.support.postgres import pg_url  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
PROCESSES, JOBS = 4, 120

# A claimer process: connect, say "ready", wait for the go file, claim until the queue is
# empty, print the claimed ids as JSON.
CLAIMER = """
import json, sys, time
from pathlib import Path
from pixelmill.db.engine import create_db_engine
from pixelmill.jobs.store import JobStore

url, worker, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = JobStore(create_db_engine(url))
store.count("queued")
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
claimed = []
while batch := store.claim(worker, lease_s=60, limit=1 + len(claimed) % 3):
    claimed += [job.id for job in batch]
    time.sleep(0.003)  # "work"; without it one SQLite writer can starve the others
print(json.dumps(claimed), flush=True)
"""


@pytest.fixture(params=["postgresql", "sqlite"])
def shared_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    return request.getfixturevalue("pg_url")


def _start_claimers(url: str, go: Path) -> list[subprocess.Popen]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, f"proc{i}", str(go)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        for i in range(PROCESSES)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    return procs


def test_processes_claiming_concurrently_never_share_a_job(shared_url: str, tmp_path):
    store = JobStore.open(shared_url)
    try:
        _, jobs = store.submit_batch([GenerationRequest(prompt=f"p{i}", steps=4) for i in range(JOBS)])
        go = tmp_path / "go"
        procs = _start_claimers(shared_url, go)
        go.touch()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
        claimed = Counter(job_id for ids in results for job_id in ids)
        assert set(claimed) == {job.id for job in jobs} and set(claimed.values()) == {1}
        assert store.count(JobStatus.running) == JOBS and store.count(JobStatus.queued) == 0
        workers = {job.worker for job in store.list_jobs(status=JobStatus.running, limit=JOBS)[0]}
        assert len(workers) >= 2, "the processes did not actually overlap"
    finally:
        store.engine.dispose()

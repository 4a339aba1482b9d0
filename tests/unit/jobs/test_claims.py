"""Races on both backends: concurrent claimers, reapers and idempotent submits.

Threads share one engine (one connection pool) or each get their own engine (separate
pools, like separate processes); tests/integration/test_store_postgres.py repeats the
claim race with real processes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from pixelmill.core.types import GenerationRequest, JobStatus
from pixelmill.core.errors import InvalidRequest
from pixelmill.db.engine import create_db_engine
from pixelmill.jobs.store import JobStore

CLAIMERS, JOBS = 4, 50


def req(prompt: str) -> GenerationRequest:
    # steps given: a request straight into the store skips the policy that fills defaults.
    return GenerationRequest(prompt=prompt, steps=4)


def _race(n: int, work):
    """Run ``work(i)`` in ``n`` threads released at the same moment; return the results."""
    barrier = threading.Barrier(n)

    def run(i: int):
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _stores(store: JobStore, db_url: str, separate_engines: bool) -> list[JobStore]:
    if not separate_engines:
        return [store] * CLAIMERS
    return [JobStore(create_db_engine(db_url)) for _ in range(CLAIMERS)]


@pytest.mark.parametrize("separate_engines", [False, True], ids=["shared-engine", "engine-per-claimer"])
def test_concurrent_claims_never_double_claim(store: JobStore, db_url: str, separate_engines: bool):
    store.submit_batch([req(f"p{i}") for i in range(JOBS)])
    stores = _stores(store, db_url, separate_engines)
    for each in stores:
        each.count(JobStatus.queued)  # connect before the race, so it starts together

    inside, most_inside, lock = [0], [0], threading.Lock()

    def claim(i: int):
        with lock:
            inside[0] += 1
            most_inside[0] = max(most_inside[0], inside[0])
        try:
            return stores[i].claim(f"w{i}", lease_s=60, limit=1 + i % 3)
        finally:
            with lock:
                inside[0] -= 1

    def claim_all(i: int) -> list[str]:
        mine = []
        while batch := claim(i):
            mine += [job.id for job in batch]
            time.sleep(0.001)  # "work": gives the other claimers a turn
        return mine

    try:
        results = _race(CLAIMERS, claim_all)
    finally:
        for other in set(stores) - {store}:
            other.engine.dispose()
    claimed = Counter(job_id for ids in results for job_id in ids)
    assert len(claimed) == JOBS and set(claimed.values()) == {1}
    running = store.list_jobs(status=JobStatus.running, limit=JOBS)[0]
    assert len(running) == JOBS and all(job.attempt == 1 for job in running)
    # The race really was a race: claims overlapped. (Who wins is the database's choice;
    # SQLite's writer lock may let one claimer win every round, which is fair enough.)
    assert most_inside[0] >= 2


def test_concurrent_reapers_and_claimers(store: JobStore):
    store.submit_batch([req(f"p{i}") for i in range(20)], max_attempts=5)
    store.claim("dead", lease_s=60, limit=20)
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    reaped = _race(4, lambda _i: store.reap_expired(now=later))
    assert sorted(job_id for ids in reaped for job_id in ids) == sorted(
        job.id for job in store.list_jobs(limit=20)[0]
    )
    assert store.count(JobStatus.queued) == 20
    claimed = _race(4, lambda i: [j.id for j in store.claim(f"w{i}", lease_s=60, limit=20)])
    all_claims = [job_id for ids in claimed for job_id in ids]
    assert len(all_claims) == len(set(all_claims)) == 20


def test_idempotent_submit_race_makes_one_job(store: JobStore):
    request = req("same")
    results = _race(8, lambda _i: store.submit(request, idempotency_key="race-key"))
    assert len({job.id for job, _created in results}) == 1
    assert sum(created for _job, created in results) == 1
    assert store.count(JobStatus.queued) == 1


def test_idempotent_race_with_different_bodies(store: JobStore):
    def submit(i: int):
        try:
            return store.submit(req(f"body {i % 2}"), idempotency_key="k")
        except InvalidRequest as exc:
            return exc

    results = _race(8, submit)
    jobs = [r for r in results if isinstance(r, tuple)]
    assert len({job.id for job, _ in jobs}) == 1 and store.count(JobStatus.queued) == 1
    assert all(isinstance(r, InvalidRequest) for r in results if not isinstance(r, tuple))


def test_capacity_is_exact_under_concurrent_submits(store: JobStore):
    def submit(i: int) -> bool:
        try:
            store.submit(req(f"p{i}"), max_queued=5)
            return True
        except Exception:  # noqa: BLE001 - Overloaded is the expected refusal
            return False

    accepted = _race(8, submit)
    assert sum(accepted) == 5 and store.count(JobStatus.queued) == 5

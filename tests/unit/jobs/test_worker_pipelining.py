"""The worker stores batch N in the background while batch N+1 generates (pixelmill.jobs.storing).

The same harness as the other worker tests (real SQLite store and result folder, the real
worker; a fake backend that records when it ran), with the result store wrapped so that
storing is slow, or fails, on demand. One job per batch (``max_batch_size=1``), so the
jobs' order is the batches' order.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from dataclasses import dataclass

import pytest

from pixelmill.core.types import JobStatus
from pixelmill.jobs.supervisor import WorkerState
from pixelmill.services import Services
from tests.support.backends.oom_above_size import OomAboveSize
from tests.support.backends.records_timing import RecordsTiming
from tests.unit.jobs.test_worker_backends import run_with_worker, services_for, submit, terminal, until, until_state


@dataclass
class Put:
    """One ``put_many`` of the worker: when it ran, and how many jobs were succeeded then."""

    files: int
    entered: float
    succeeded_at_entry: int
    running_at_entry: int
    returned: float | None = None
    succeeded_at_return: int | None = None


class SlowResults:
    """The result store, but ``put_many`` first sleeps ``delay_s`` (in the worker's thread),
    then raises ``ENOSPC`` while ``failing``; each call is noted in ``puts``."""

    def __init__(self, services: Services, delay_s: float, failing: bool = False) -> None:
        self.inner, self.store, self.delay_s, self.failing = services.results, services.store, delay_s, failing
        self.puts: list[Put] = []
        self._lock = threading.Lock()

    def put_many(self, files):
        put = Put(len(files), time.monotonic(), self.store.count(JobStatus.succeeded),
                  self.store.count(JobStatus.running))
        with self._lock:
            self.puts.append(put)
        time.sleep(self.delay_s)
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        ids = self.inner.put_many(files)
        put.succeeded_at_return, put.returned = self.store.count(JobStatus.succeeded), time.monotonic()
        return ids

    def __getattr__(self, name):
        return getattr(self.inner, name)


def pipelined(tmp_path, backend, delay_s: float, failing: bool = False,
              **settings) -> tuple[Services, SlowResults]:
    """Services whose worker runs ``backend`` one job per batch and stores through :class:`SlowResults`."""
    services = services_for(tmp_path, backend, **({"max_batch_size": 1} | settings))
    slow = SlowResults(services, delay_s, failing)
    services.workers[0].results = slow
    return services, slow


async def eventually(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never held"
        await asyncio.sleep(0.01)


async def assert_files(services: Services, job) -> None:
    assert job.result_ids, job
    for result_id in job.result_ids:
        assert (await services.read_result(result_id)) is not None


def test_the_next_batch_generates_while_the_last_one_is_stored(tmp_path):
    backend = RecordsTiming(step_s=0.05)  # 0.2 s per batch
    services, slow = pipelined(tmp_path, backend, delay_s=0.4)

    async def scenario(services: Services) -> None:
        ids = [(await submit(services, seed=seed)).id for seed in range(3)]
        jobs = [await until(services, job_id, terminal) for job_id in ids]
        assert [(job.status, job.attempt) for job in jobs] == [(JobStatus.succeeded, 1)] * 3
        assert [call.seeds for call in backend.log] == [[0], [1], [2]]
        for stored, following in zip(slow.puts, backend.log[1:]):
            # Serial, batch N+1 would start only after N's files and its transaction.
            assert following.started < stored.returned, "the next batch waited for the last one's files"
        overlaps = [stored.returned - following.started for stored, following in zip(slow.puts, backend.log[1:])]
        print(f"generation of batch N+1 began {', '.join(f'{s:.3f}' for s in overlaps)} s before N's files were in")

    run_with_worker(services, scenario)


def test_a_job_succeeds_only_after_its_files_and_batches_are_stored_one_at_a_time(tmp_path):
    backend = RecordsTiming(step_s=0.02)
    services, slow = pipelined(tmp_path, backend, delay_s=0.2)

    async def scenario(services: Services) -> None:
        ids = [(await submit(services, seed=seed)).id for seed in range(4)]
        jobs = [await until(services, job_id, terminal) for job_id in ids]
        assert [job.status for job in jobs] == [JobStatus.succeeded] * 4
        # While batch k's files are written, exactly the k batches before it are complete: not
        # the one being stored (files first), and no earlier one still pending (one store at a time).
        assert [(put.succeeded_at_entry, put.succeeded_at_return) for put in slow.puts] == [(k, k) for k in range(4)]
        assert all(put.running_at_entry >= 1 for put in slow.puts)
        for job in jobs:
            await assert_files(services, job)

    run_with_worker(services, scenario)


def test_the_halves_of_a_batch_out_of_memory_are_stored_after_the_last_batch_one_by_one(tmp_path):
    backend = OomAboveSize(max_images=1)
    services, slow = pipelined(tmp_path, backend, delay_s=0.3, max_batch_size=2)

    async def main() -> None:
        backend.start()
        worker = services.workers[0]
        # Queued before the worker looks: the lone wider job is one batch, the other two the next.
        ids = [(await submit(services, seed=seed, width=96 if seed == 0 else 64)).id for seed in range(3)]
        task = asyncio.create_task(worker.run())
        try:
            jobs = [await until(services, job_id, terminal) for job_id in ids]
        finally:
            await worker.shutdown(task, grace_s=5)
        assert [(job.status, job.attempt) for job in jobs] == [(JobStatus.succeeded, 1)] * 3
        assert backend.sizes == [1, 2, 1, 1]
        # The first half waited for the batch stored before it; the second half for the first.
        assert [(put.succeeded_at_entry, put.succeeded_at_return) for put in slow.puts] == [(0, 0), (1, 1), (2, 2)]

    asyncio.run(main())


@pytest.mark.parametrize(("next_batch", "max_attempts"), [("running", 2), ("running", 1), ("generated", 2)])
def test_a_storage_fault_gives_back_the_stored_batch_and_the_next_one(tmp_path, next_batch, max_attempts):
    # "running": the fault comes while the next batch generates (it is stopped); "generated":
    # the next batch is done generating and waits to be stored when the fault comes.
    backend = RecordsTiming(step_s=0.25 if next_batch == "running" else 0.0)
    services, slow = pipelined(tmp_path, backend, delay_s=0.5, failing=True, max_attempts=max_attempts,
                               lease_s=30.0)  # a batch left holding its leases would stay running

    async def scenario(services: Services) -> None:
        first, second = [(await submit(services, seed=seed)).id for seed in range(2)]
        await until_state(services, WorkerState.degraded)
        faulted = time.monotonic()
        back = [await until(services, job_id, lambda job: job.status is not JobStatus.running, timeout=3.0)
                for job_id in (first, second)]
        assert time.monotonic() - faulted < 3.0
        if max_attempts == 1:
            assert (back[0].status, back[0].error.code) == (JobStatus.failed, "storage_error")
        else:
            assert (back[0].status, back[0].attempt) == (JobStatus.queued, 1)  # its attempt counted
        assert (back[1].status, back[1].attempt) == (JobStatus.queued, 0)  # released: it never failed
        assert not any(job.result_ids for job in back)
        health = services.workers[0].health
        assert health.state is WorkerState.degraded and "storing results failed" in health.reason
        assert len(backend.log) == 2
        if next_batch == "running":
            assert backend.log[1].outcome == "canceled"  # stopped, not run to the end for nothing

        slow.failing = False  # storage works again: the worker recovers and runs them
        for job_id in (second,) if max_attempts == 1 else (first, second):
            job = await until(services, job_id, terminal)
            assert job.status is JobStatus.succeeded
            await assert_files(services, job)
        assert services.workers[0].health.state is WorkerState.ready

    run_with_worker(services, scenario)


@pytest.mark.parametrize("how", ["stop", "abort"])
def test_stopping_while_one_batch_is_stored_and_the_next_generates(tmp_path, how):
    backend = RecordsTiming(step_s=0.1)  # 0.4 s per batch
    services, slow = pipelined(tmp_path, backend, delay_s=1.0)

    async def main() -> None:
        backend.start()
        worker = services.workers[0]
        ids = [(await submit(services, seed=seed)).id for seed in range(3)]
        task = asyncio.create_task(worker.run())
        try:
            # Both, in either order: under load the background store can reach put_many only
            # after the next batch has started generating.
            await eventually(lambda: len(backend.log) == 2 and slow.puts, what="batch 2 generating, batch 1 storing")
            assert slow.puts[0].returned is None  # the first one is being stored
            if how == "stop":
                worker.stop()
                await asyncio.wait_for(task, 10)
            else:  # the grace runs out: the generating batch is released, the stored one finishes
                await asyncio.wait_for(worker.shutdown(task, grace_s=0.05), 10)
        finally:
            if not task.done():
                await worker.shutdown(task, grace_s=0)
        jobs = [await asyncio.to_thread(services.store.get, job_id) for job_id in ids]
        assert (jobs[0].status, jobs[0].attempt) == (JobStatus.succeeded, 1)
        await assert_files(services, jobs[0])
        if how == "stop":
            assert (jobs[1].status, jobs[1].attempt) == (JobStatus.succeeded, 1)
            await assert_files(services, jobs[1])
        else:
            assert (jobs[1].status, jobs[1].attempt) == (JobStatus.queued, 0)
            assert backend.log[1].outcome == "canceled"
        assert (jobs[2].status, jobs[2].attempt) == (JobStatus.queued, 0)  # never claimed
        assert len(backend.log) == 2 and worker.health.state is WorkerState.stopped

    asyncio.run(main())


def test_leases_are_renewed_while_a_batch_is_stored_slowly(tmp_path):
    backend = RecordsTiming()
    services, slow = pipelined(tmp_path, backend, delay_s=1.8, lease_s=1.0, heartbeat_s=0.2)

    async def scenario(services: Services) -> None:
        ids = [(await submit(services, seed=seed)).id for seed in range(2)]
        await eventually(lambda: slow.puts, what="storing starting")
        started = time.monotonic()
        while not (len(slow.puts) == 2 and slow.puts[1].returned is not None):
            # Any host may reap: a lease that ran out while its batch was stored would be taken.
            assert await asyncio.to_thread(services.store.reap_expired) == []
            assert time.monotonic() - started < 15, "storing never finished"
            await asyncio.sleep(0.1)
        assert slow.puts[0].returned - slow.puts[0].entered > 1.5  # longer than a lease
        jobs = [await until(services, job_id, terminal) for job_id in ids]
        assert [(job.status, job.attempt) for job in jobs] == [(JobStatus.succeeded, 1)] * 2
        assert len(backend.log) == 2

    run_with_worker(services, scenario)

"""The worker loop against a real SQLite store and a fake engine: overlap, heartbeats, waits.

The fake engine makes no images; it records when each pipeline call starts and can be
told to hold a call until the test releases it, so the order of engine calls, stored
files and completed jobs can be checked exactly.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pixelmill.domain import GeneratedImage, GenerationRequest, JobResult, JobStatus, Progress
from pixelmill.engine.runner import EngineState
from pixelmill.jobs.events import JobEvents
from pixelmill.jobs.notify import Notifier
from pixelmill.jobs.results import ResultStore
from pixelmill.jobs.service import JobService, ModelCatalog
from pixelmill.jobs.store import JobStore
from pixelmill.jobs.worker import Worker
from pixelmill.registry import ModelRegistry
from pixelmill.settings import Settings


def req(seed: int, **fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a fox", "steps": 4, "width": 64, "height": 64, "seed": seed, **fields})


class FakeRunner:
    """Stands in for :class:`EngineRunner`: each call reports two steps and returns one image per job."""

    state = EngineState.ready

    def __init__(self) -> None:
        self.calls: list[list[int]] = []  # seeds of each pipeline call, in call order
        self.release = asyncio.Event()  # set: calls return at once
        self.release.set()
        self.progress_delay_s = 0.0

    async def generate_batch(self, requests, *, on_progress=None, cancel=None) -> list[JobResult]:
        self.calls.append([r.seed for r in requests])
        for step in (1, 2):
            on_progress(Progress(step=step, total=2))
            await asyncio.sleep(self.progress_delay_s)
        await self.release.wait()
        return [JobResult(images=[GeneratedImage(data=b"png", media_type="image/png", seed=r.seed, width=64, height=64)],
                          seed=r.seed, model="fake", width=64, height=64, steps=r.steps, sampler="euler",
                          gpu_seconds=0.01) for r in requests]


class GatedResults(ResultStore):
    """A result store whose ``put`` (on a worker thread) waits until the test opens the gate."""

    def __init__(self, root: Path):
        super().__init__(root, retention_s=3600)
        self.gate = threading.Event()
        self.gate.set()

    def put(self, data: bytes, media_type: str) -> str:
        assert self.gate.wait(30), "the test never opened the gate"
        return super().put(data, media_type)


@pytest.fixture
def parts(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", max_batch_size=2,
                        max_batch_wait_ms=0, progress_interval_s=0.01, poll_interval_s=0.05, heartbeat_s=0.05)
    store = JobStore.open(str(tmp_path / "jobs.db"))
    yield settings, store, GatedResults(tmp_path / "results")
    store.engine.dispose()


def start(settings, store, results, runner) -> tuple[Worker, Notifier, JobService]:
    notifier = Notifier()
    worker = Worker(settings, store, runner, results, notifier, JobEvents(store, None), worker_id="w1")
    service = JobService(settings, store, ModelCatalog(settings, ModelRegistry(settings.models_dir)), notifier)
    return worker, notifier, service


async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def test_next_batch_starts_while_the_previous_results_are_stored(parts):
    settings, store, results = parts
    runner = FakeRunner()

    async def scenario():
        worker, _, _ = start(settings, store, results, runner)
        first = [store.submit(req(i))[0] for i in (1, 2)]
        second = [store.submit(req(i))[0] for i in (3, 4)]
        results.gate.clear()  # storing the first batch's files hangs
        task = asyncio.create_task(worker.run())
        await until(lambda: len(runner.calls) == 2)
        # The engine took the second batch while the first one's files were not stored yet,
        # and a job is never succeeded before its files are.
        assert runner.calls == [[1, 2], [3, 4]]
        assert {store.get(job.id).status for job in first} == {JobStatus.running}
        results.gate.set()
        await until(lambda: all(store.get(job.id).status is JobStatus.succeeded for job in first + second))
        worker.stop()
        await asyncio.wait_for(task, 10)
        for job in first + second:
            assert results.get(store.get(job.id).result_ids[0]).read() == b"png"

    asyncio.run(scenario())


def test_stop_waits_for_the_last_batch_to_be_stored(parts):
    settings, store, results = parts
    runner = FakeRunner()

    async def scenario():
        worker, _, _ = start(settings, store, results, runner)
        job = store.submit(req(1))[0]
        results.gate.clear()
        task = asyncio.create_task(worker.run())
        await until(lambda: runner.calls)
        worker.stop()
        await asyncio.sleep(0.1)
        assert not task.done()  # still storing the batch it ran
        results.gate.set()
        await asyncio.wait_for(task, 10)
        assert store.get(job.id).status is JobStatus.succeeded

    asyncio.run(scenario())


def test_one_heartbeat_transaction_per_batch_and_lost_leases_per_job(parts, monkeypatch):
    settings, store, results = parts
    runner = FakeRunner()
    runner.progress_delay_s = 0.05
    runner.release.clear()
    beats: list[list[str]] = []
    real = store.heartbeat_many

    def spy(guards, **kwargs):
        beats.append([guard.job_id for guard in guards])
        return real(guards, **kwargs)

    monkeypatch.setattr(store, "heartbeat_many", spy)

    async def scenario():
        worker, _, _ = start(settings, store, results, runner)
        kept, lost = (store.submit(req(i))[0] for i in (1, 2))
        task = asyncio.create_task(worker.run())
        await until(lambda: len(beats) >= 1)
        assert beats[0] == [kept.id, lost.id]  # the whole batch in one call
        # Another host reaps and re-runs `lost`: this worker must stop renewing it.
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE jobs SET worker = 'w2', attempt = 2 WHERE id = ?", (lost.id,))
        await until(lambda: beats[-1] == [kept.id])
        runner.release.set()
        await until(lambda: store.get(kept.id).status is JobStatus.succeeded)
        worker.stop()
        await asyncio.wait_for(task, 10)
        after = store.get(lost.id)
        assert (after.status, after.worker, after.result_ids) == (JobStatus.running, "w2", [])

    asyncio.run(scenario())


def test_a_synchronous_wait_ignores_progress_and_wakes_at_the_end(parts, monkeypatch):
    settings, store, results = parts
    settings = settings.model_copy(update={"poll_interval_s": 5.0})  # only notifications can end it quickly
    runner = FakeRunner()
    runner.progress_delay_s = 0.05

    async def scenario():
        worker, notifier, service = start(settings, store, results, runner)
        job = store.submit(req(1))[0]
        reads = []
        real_get = service.get

        async def counting_get(job_id):
            reads.append(job_id)
            return await real_get(job_id)

        monkeypatch.setattr(service, "get", counting_get)
        waiter = asyncio.create_task(service.wait(job.id))
        task = asyncio.create_task(worker.run())
        done = await asyncio.wait_for(waiter, 5)
        assert done.status is JobStatus.succeeded
        assert len(reads) <= 3  # queued, running (claim), succeeded: progress never woke it
        worker.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_changes_made_elsewhere_are_found_by_one_shared_poll(parts, monkeypatch):
    settings, store, results = parts  # no worker here: every change comes from "another host"
    settings = settings.model_copy(update={"heartbeat_s": 10.0})  # a waiter's own re-read: after 10 s
    _, _, service = start(settings, store, results, FakeRunner())
    polls: list[list[str]] = []
    real = store.job_states

    def spy(job_ids, **kwargs):
        polls.append(sorted(job_ids))
        return real(job_ids, **kwargs)

    monkeypatch.setattr(store, "job_states", spy)

    async def scenario():
        jobs = [store.submit(req(i))[0] for i in range(3)]
        waiters = [asyncio.create_task(service.wait(job.id, timeout=30)) for job in jobs]
        await asyncio.sleep(0.3)  # ~6 poll intervals
        assert polls and all(ids == sorted(job.id for job in jobs) for ids in polls)  # one read for all
        assert len(polls) <= 8
        (claimed,) = store.claim("elsewhere", lease_s=60)
        store.heartbeat(claimed.id, "elsewhere", claimed.attempt, lease_s=60, progress=(1, 4))
        store.complete(claimed.id, "elsewhere", claimed.attempt, result_ids=["r"], seeds=[0], gpu_seconds=1,
                       sampler="euler", width=64, height=64)
        done = await asyncio.wait_for(waiters[0], 2)  # found by the poll, long before the waiter's own re-read
        assert done.status is JobStatus.succeeded
        # A progress follower of a queued job (SSE) hears of the queue moving ahead of it.
        seen = []

        async def follow():
            async for job in service.watch(jobs[2].id):
                seen.append(job.status)

        follower = asyncio.create_task(follow())
        await until(lambda: seen)
        (second,) = store.claim("elsewhere", lease_s=60)
        await until(lambda: len(seen) >= 2, timeout=2)
        store.cancel(jobs[2].id)  # still queued: canceled at once
        assert (await asyncio.wait_for(waiters[2], 2)).status is JobStatus.canceled
        await asyncio.wait_for(follower, 2)
        assert seen[-1] is JobStatus.canceled
        store.cancel(second.id)  # running elsewhere: that worker ends it
        store.mark_canceled(second.id, "elsewhere", second.attempt)
        assert (await asyncio.wait_for(waiters[1], 2)).status is JobStatus.canceled

    asyncio.run(scenario())


def test_no_wait_for_company_after_jobs_that_came_one_at_a_time(parts):
    settings, store, results = parts
    worker, _, _ = start(settings.model_copy(update={"max_batch_wait_ms": 10}), store, results, FakeRunner())
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def arrivals(*offsets_ms: float) -> None:
        worker._arrivals.clear()
        worker._arrivals.extend(t0 + timedelta(milliseconds=ms) for ms in offsets_ms)

    arrivals(0, 1000, 2000, 3000)
    assert worker._sequential(t0 + timedelta(milliseconds=4000))  # a lone client, request after request
    assert not worker._sequential(t0 + timedelta(milliseconds=3050))  # this one came close behind
    arrivals(0, 1000, 1004, 2000)
    assert not worker._sequential(t0 + timedelta(milliseconds=3000))  # a recent pair arrived together
    arrivals(1000, 2000, 3000)
    assert not worker._sequential(t0 + timedelta(milliseconds=4000))  # too little history: wait


def test_notifier_progress_only_wakes_progress_subscribers():
    async def scenario():
        notifier = Notifier()
        with notifier.subscribe("j", progress=False) as status, notifier.subscribe("j") as everything:
            notifier.job_changed("j", progress_only=True)
            await status.wait(0.01)
            await everything.wait(0.01)
            assert not status._event.is_set() and everything._event.is_set()
            notifier.job_changed("j")
            assert status._event.is_set()
        assert not notifier._job_waiters  # unsubscribed on exit

    asyncio.run(scenario())

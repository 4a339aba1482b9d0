"""The worker on fake backends (tests/support/backends): each failure ends a job the right way.

Real SQLite job store and result folder in a temporary directory, the real worker and
job service wired by ``build_services``; only the backend is fake, so these run in
about a second each.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest

from pixelmill.core.errors import ModelUnavailable
from pixelmill.core.types import GenerationRequest, JobRecord, JobStatus
from pixelmill.jobs.supervisor import Backoff, WorkerState
from pixelmill.services import Services, build_services
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend
from tests.support.backends.crash_mid_job import CrashMidJob
from tests.support.backends.load_failure import LoadFailure
from tests.support.backends.nan_output import NanOutput
from tests.support.backends.oom_first_attempt import OomFirstAttempt
from tests.support.backends.slow_cancel_aware import SlowCancelAware
from tests.support.images import decode

FAST = {"lease_s": 4.0, "heartbeat_s": 0.2, "poll_interval_s": 0.02, "progress_interval_s": 0.02,
        "max_batch_wait_ms": 0.0}


def services_for(tmp_path: Path, backend: FakeBackend | None, **settings) -> Services:
    """Services on a SQLite store in ``tmp_path`` whose one worker (if any) runs ``backend``."""
    config = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                      db=f"sqlite:///{tmp_path / 'jobs.db'}", **(FAST | settings))
    workers = 0 if backend is None else 1
    return build_services(config, workers=workers, backend_factory=lambda _settings, _registry: backend)


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a fake", "width": 64, "height": 64, "steps": 4, "seed": 7} | fields))


async def submit(services: Services, **fields) -> JobRecord:
    attempts = services.settings.max_attempts
    job, _ = await asyncio.to_thread(services.store.submit, request(**fields), max_attempts=attempts)
    services.notifier.work_available()
    return job


async def until(services: Services, job_id: str, done, timeout: float = 10.0) -> JobRecord:
    """The job once ``done(job)`` holds; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        job = await asyncio.to_thread(services.store.get, job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck: {job.status.value}, attempt {job.attempt}"
        await asyncio.sleep(0.02)


def terminal(job: JobRecord) -> bool:
    return job.status.terminal


def run_with_worker(services: Services, scenario) -> None:
    """Start the backend and the worker, run ``scenario(services)``, stop the worker."""
    async def main() -> None:
        services.backends[0].start()
        worker = services.workers[0]
        task = asyncio.create_task(worker.run())
        try:
            await scenario(services)
        finally:
            await worker.shutdown(task, grace_s=5)

    asyncio.run(main())


def test_a_crash_mid_job_is_retried_and_the_next_attempt_succeeds(tmp_path):
    backend = CrashMidJob(crashes=1)

    async def scenario(services: Services) -> None:
        job = await until(services, (await submit(services)).id, terminal)
        assert (job.status, job.attempt) == (JobStatus.succeeded, 2)
        assert backend.calls == 2
        assert services.workers[0].health.state is WorkerState.ready  # a job's crash is not a worker fault

    run_with_worker(services_for(tmp_path, backend), scenario)


def test_a_job_that_crashes_every_attempt_fails_with_backend_error(tmp_path):
    backend = CrashMidJob()

    async def scenario(services: Services) -> None:
        job = await until(services, (await submit(services)).id, terminal)
        assert (job.status, job.attempt) == (JobStatus.failed, 2)
        assert job.error.code == "backend_error" and "RuntimeError" in job.error.message
        assert not job.result_ids

    run_with_worker(services_for(tmp_path, backend, max_attempts=2), scenario)


def test_out_of_memory_on_the_first_attempt_then_the_job_succeeds(tmp_path):
    async def scenario(services: Services) -> None:
        job = await until(services, (await submit(services, width=96, height=64)).id, terminal)
        assert (job.status, job.attempt) == (JobStatus.succeeded, 2)
        image = decode(await services.read_result(job.result_ids[0]))
        assert image.size == (96, 64)

    run_with_worker(services_for(tmp_path, OomFirstAttempt()), scenario)


def test_cancel_mid_run_ends_the_job_canceled_promptly(tmp_path):
    backend = SlowCancelAware(step_s=0.02)

    async def scenario(services: Services) -> None:
        job = await submit(services, steps=200)  # 4 s if nothing stopped it
        await until(services, job.id, lambda j: j.status is JobStatus.running and j.progress_step >= 2)
        asked = time.monotonic()
        await services.jobs.cancel(job.id)
        job = await until(services, job.id, terminal)
        assert job.status is JobStatus.canceled
        assert time.monotonic() - asked < 1.0
        assert backend.last_step < 100 and not job.result_ids

    run_with_worker(services_for(tmp_path, backend), scenario)


def test_nan_output_fails_the_job_with_invalid_output_not_a_black_image(tmp_path):
    async def scenario(services: Services) -> None:
        job = await until(services, (await submit(services)).id, terminal)
        assert job.status is JobStatus.failed and job.attempt == 1  # the same request would overflow again
        assert job.error.code == "invalid_output" and "black" in job.error.message
        assert not job.result_ids
        stored = services.settings.results_dir
        assert not stored.exists() or not any(stored.iterdir())

    run_with_worker(services_for(tmp_path, NanOutput()), scenario)


def test_a_model_that_failed_to_load_refuses_submissions_at_once(tmp_path):
    backend = LoadFailure("checkpoint 'broken' is not a valid safetensors file")

    async def scenario(services: Services) -> None:
        await until_state(services, WorkerState.failed)
        started = time.monotonic()
        with pytest.raises(ModelUnavailable) as refused:
            await services.jobs.submit(request())
        assert time.monotonic() - started < 0.5
        assert refused.value.code == "model_unavailable"
        assert "the model failed to load: checkpoint 'broken'" in refused.value.message
        assert services.store.count(JobStatus.queued) == 0  # nothing was stored

    run_with_worker(services_for(tmp_path, backend), scenario)


async def until_state(services: Services, state: WorkerState, timeout: float = 10.0) -> None:
    health, deadline = services.workers[0].health, time.monotonic() + timeout
    while health.state is not state:
        assert time.monotonic() < deadline, f"worker still {health.state.value} ({health.reason})"
        await asyncio.sleep(0.02)


def test_a_storage_fault_requeues_the_batch_degrades_the_worker_and_it_recovers(tmp_path):
    # Root ignores chmod, so the results folder is made unusable by putting a file in its place.
    services = services_for(tmp_path, FakeBackend())
    results = services.settings.results_dir
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("not a folder")

    async def scenario(services: Services) -> None:
        job = await submit(services)
        await until_state(services, WorkerState.degraded)
        job = await until(services, job.id, lambda j: j.status is JobStatus.queued and j.attempt == 1)
        health = services.workers[0].health
        assert "storing results failed" in health.reason and "FileExistsError" in health.reason
        assert str(tmp_path) not in health.reason  # no paths on a public endpoint
        with pytest.raises(ModelUnavailable) as refused:
            await services.jobs.submit(request(seed=8))
        assert refused.value.code == "worker_unavailable"
        assert (await services.availability.waiting_reason(job)) == health.reason

        results.unlink()  # storage works again: the worker finds out by itself
        job = await until(services, job.id, terminal)
        assert (job.status, job.attempt) == (JobStatus.succeeded, 2)
        assert services.workers[0].health.state is WorkerState.ready

    run_with_worker(services, scenario)


def test_a_storage_fault_on_the_last_attempt_fails_the_job_with_storage_error(tmp_path):
    services = services_for(tmp_path, FakeBackend(), max_attempts=1)
    services.settings.results_dir.parent.mkdir(parents=True, exist_ok=True)
    services.settings.results_dir.write_text("not a folder")

    async def scenario(services: Services) -> None:
        job = await until(services, (await submit(services)).id, terminal)
        assert job.status is JobStatus.failed and job.error.code == "storage_error"

    run_with_worker(services, scenario)


def test_an_api_only_host_says_why_a_queued_job_waits_when_no_worker_was_seen(tmp_path):
    services = services_for(tmp_path, None)

    async def scenario() -> None:
        job = await services.jobs.submit(request())  # accepted: remote workers may come
        job = job[0]
        assert await services.availability.waiting_reason(job) is None  # just queued
        old = job.model_copy(update={"created_at": job.created_at - timedelta(seconds=60)})
        reason = await services.availability.waiting_reason(old)
        assert reason is not None and "no worker has been seen for 4 s" in reason
        # A worker renewing a lease (busy with another job) is a sign of life.
        await asyncio.to_thread(services.store.submit, request(seed=9))
        await asyncio.to_thread(services.store.claim, "remote:1", lease_s=4)
        assert await services.availability.waiting_reason(old) is None

    asyncio.run(scenario())


def test_backoff_doubles_up_to_its_cap_and_starts_over():
    backoff = Backoff(initial=0.5, cap=3)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5

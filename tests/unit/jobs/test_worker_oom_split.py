"""A batch that runs out of device memory is split in halves, and its shape gets a lower cap.

Real SQLite store and result folder, the real worker; the backend is the fake
:class:`~tests.support.backends.oom_above_size.OomAboveSize`.
"""

from __future__ import annotations

import asyncio

from pixelmill.core.types import JobStatus
from tests.support.backends.oom_above_size import OomAboveSize
from tests.unit.jobs.test_worker_backends import request, services_for, terminal, until


def run_jobs_then(tmp_path, backend, batches: list[list[dict]], **settings) -> list:
    """Queue each batch of requests before the worker looks, let it finish them all; the jobs."""
    services = services_for(tmp_path, backend, **settings)
    finished = []

    async def queue(fields: list[dict]) -> list[str]:
        ids = []
        for one in fields:
            job, _ = await asyncio.to_thread(services.store.submit, request(**one),
                                             max_attempts=services.settings.max_attempts)
            ids.append(job.id)
        services.notifier.work_available()
        return ids

    async def main() -> None:
        services.backends[0].start()
        worker = services.workers[0]
        ids = await queue(batches[0])  # queued before the worker looks: claimed as one batch
        task = asyncio.create_task(worker.run())
        try:
            for round_index, fields in enumerate(batches):
                ids = ids if round_index == 0 else await queue(fields)
                finished.extend([await until(services, job_id, terminal) for job_id in ids])
        finally:
            await worker.shutdown(task, grace_s=5)

    asyncio.run(main())
    return finished, services.workers[0]


def test_an_oom_batch_is_split_and_its_shape_capped(tmp_path):
    backend = OomAboveSize(max_images=2, step_s=0.01)
    jobs, worker = run_jobs_then(tmp_path, backend, [[{"seed": s} for s in range(4)],
                                                     [{"seed": s} for s in range(4, 8)]],
                                 max_batch_size=4, max_batch_wait_ms=300.0)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 8
    assert all(job.attempt == 1 for job in jobs)  # a split is not a failed attempt
    assert backend.sizes[:3] == [4, 2, 2]  # OOM at 4, then two halves
    assert max(backend.sizes[3:]) <= 2  # the next batches of that shape respect the cap
    assert worker.batch_cap(request(seed=99)) == 2
    assert worker.batch_cap(request(width=128)) == 4  # another shape keeps the full size


def test_a_single_job_that_runs_out_of_memory_is_retried_not_split(tmp_path):
    backend = OomAboveSize(max_images=1)
    jobs, _ = run_jobs_then(tmp_path, backend, [[{"n": 2}]], max_attempts=2)
    assert jobs[0].status is JobStatus.failed and jobs[0].error.code == "out_of_memory"
    assert backend.sizes == [2, 2]  # retried at the same size within max_attempts


def test_halves_split_again_down_to_one_job(tmp_path):
    backend = OomAboveSize(max_images=1, step_s=0.01)
    jobs, worker = run_jobs_then(tmp_path, backend, [[{"seed": s} for s in range(4)]],
                                 max_batch_size=4, max_batch_wait_ms=300.0)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 4
    assert sorted(backend.sizes) == [1, 1, 1, 1, 2, 2, 4]
    assert worker.batch_cap(request()) == 1

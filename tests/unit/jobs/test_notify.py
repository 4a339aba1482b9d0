"""In-process wake-ups: who is woken by a status change and who by progress, and how
often a waiter reads the store (polls only for jobs whose changes are not announced)."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from pixelmill.core.types import GenerationRequest, JobStatus
from pixelmill.core.errors import WaitTimeout
from pixelmill.jobs.notify import Notifier, wait_event
from pixelmill.jobs.service import JobService
from pixelmill.jobs.store import Completion, JobStore
from pixelmill.settings import Settings


async def _woken(notifier: Notifier, signal: str, *, progress: bool) -> bool:
    """Whether a listener (wanting progress or not) wakes before its timeout after ``signal``."""
    with notifier.listen("job-1", progress=progress) as news:
        waiter = asyncio.ensure_future(news.wait(timeout=5))
        await asyncio.sleep(0)
        getattr(notifier, signal)("job-1")
        done, _ = await asyncio.wait({waiter}, timeout=0.5)
        waiter.cancel()
    return bool(done)


def test_status_changes_wake_every_waiter():
    notifier = Notifier()
    assert asyncio.run(_woken(notifier, "job_changed", progress=False))
    assert asyncio.run(_woken(notifier, "job_changed", progress=True))


def test_progress_wakes_only_waiters_that_want_it():
    notifier = Notifier()
    assert asyncio.run(_woken(notifier, "job_progressed", progress=True))
    assert not asyncio.run(_woken(notifier, "job_progressed", progress=False))


def test_news_between_a_read_and_the_wait_is_kept():
    notifier = Notifier()

    async def scenario() -> float:
        with notifier.listen("job-1") as news:
            notifier.job_changed("job-1")  # e.g. while the job was being read
            started = time.monotonic()
            await news.wait(timeout=5)
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.5


def test_listeners_are_forgotten_once_they_leave():
    notifier = Notifier()

    async def scenario() -> None:
        with notifier.listen("job-1") as news:
            await news.wait(timeout=0.01)
        with notifier.listen("job-2", progress=False) as news:
            await asyncio.wait_for(news.wait(timeout=0.01), 1)

    asyncio.run(scenario())
    assert notifier._job_waiters == {}


# ---- waiting on a job: announced changes vs polling ---------------------------------------


class CountingStore(JobStore):
    """The real store, counting the job reads a waiter makes."""

    reads = 0

    def get(self, job_id: str):
        self.reads += 1
        return super().get(job_id)


@pytest.fixture
def counting_store(db_url: str):
    store = CountingStore.open(db_url)
    yield store
    store.engine.dispose()


def _service(store: JobStore, notifier: Notifier, **settings) -> JobService:
    # wait/watch never look at the model catalog
    return JobService(Settings(poll_interval_s=0.1, heartbeat_s=5, **settings), store, None, notifier)


def _running_job(store: JobStore, worker: str):
    store.submit(GenerationRequest(prompt="a fox", steps=4, width=64, height=64))
    (job,) = store.claim(worker, lease_s=60)
    return job


def _complete(store: JobStore, job, worker: str) -> None:
    done = Completion(job.id, job.attempt, ["r"], [1], 1.0, "euler", 64, 64)
    assert store.complete_batch(worker, [done])[job.id] is not None


def _wait_out(store: CountingStore, worker: str) -> tuple[int, float, JobStatus]:
    """Wait on a job that runs on ``worker`` (this process's worker is "local") for 1 s, then
    complete it as that worker would. Returns the store reads while it ran, how long the
    waiter took to see the end, and the status it saw."""
    notifier = Notifier()
    notifier.add_worker("local")
    service = _service(store, notifier)
    job = _running_job(store, worker)

    async def scenario():
        waiter = asyncio.ensure_future(service.wait(job.id))
        await asyncio.sleep(1.0)  # ten poll intervals
        reads_while_running = store.reads
        await asyncio.to_thread(_complete, store, job, worker)
        if worker == "local":
            notifier.job_changed(job.id)  # what the local worker does after storing a result
        started = time.monotonic()
        done = await asyncio.wait_for(waiter, 2)
        return reads_while_running, time.monotonic() - started, done.status

    return asyncio.run(scenario())


def test_a_job_on_this_process_worker_is_not_polled(counting_store: CountingStore):
    reads, latency, status = _wait_out(counting_store, "local")
    assert reads == 1  # the first look only: the worker announces every change
    assert latency < 0.5 and status is JobStatus.succeeded


def test_a_job_on_another_process_worker_is_polled(counting_store: CountingStore):
    reads, latency, status = _wait_out(counting_store, "elsewhere")  # nobody announces its end here
    assert reads >= 5  # every poll interval (0.1 s)
    assert latency < 0.5 and status is JobStatus.succeeded


def test_a_wait_times_out_on_time_even_between_slow_polls(counting_store: CountingStore):
    notifier = Notifier()
    notifier.add_worker("local")
    service = _service(counting_store, notifier)
    job = _running_job(counting_store, "local")

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            await service.wait(job.id, timeout=0.3)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0  # not the 5 s safety poll


async def _stops_when_canceled_as_the_event_fires(wait) -> bool:
    """A heartbeat-like loop canceled in the same tick its event is set: does it end?"""
    event = asyncio.Event()

    async def beat():
        while True:
            await wait(event)
            event.clear()

    task = asyncio.create_task(beat())
    await asyncio.sleep(0.01)  # waiting now
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=0.3)
    task.cancel()  # the control's loop ran on: end it now that the event is clear
    return bool(done)


def test_wait_event_never_swallows_a_cancellation():
    # The hang this replaced: a worker waited forever for a heartbeat that never stopped.
    assert asyncio.run(_stops_when_canceled_as_the_event_fires(lambda event: wait_event(event, 0.05)))


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for keeps cancellations from Python 3.12")
def test_wait_for_swallows_it_on_this_python_the_control():
    async def wait_for(event):
        try:
            await asyncio.wait_for(event.wait(), 0.05)
        except TimeoutError:
            pass

    assert not asyncio.run(_stops_when_canceled_as_the_event_fires(wait_for))

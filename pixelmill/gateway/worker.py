"""The upstream worker: claims the jobs routed to one backend and runs many at once.

It is a worker like :class:`pixelmill.jobs.worker.Worker` as far as the store can tell:
it claims (``route`` = its backend's name), holds a lease renewed by heartbeats that
carry the upstream's progress and learn of cancellations, and ends each job through the
guarded writes of :class:`~pixelmill.jobs.leases.LeaseStore`. Results are downloaded and
stored locally (upstream URLs expire); webhooks and SSE follow from the job events.

Never billing twice: a Replicate-style prediction's id is committed to the job row
(``upstream_id``) *before* the worker waits on it. Whoever claims the job next (this
gateway after a restart, or another one after the lease ran out) finds the id and
resumes polling it instead of creating another prediction. An OpenAI-style request is
one synchronous call with no id to resume: a marker is committed before it is sent, and
a job that comes back with that marker fails with ``upstream_interrupted`` rather than
sending the request again (see docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from pixelmill.core.types import JobRecord
from pixelmill.gateway.clients import OpenAIClient, ReplicateClient, UpstreamError, client_for
from pixelmill.gateway.config import Backend
from pixelmill.jobs.events import JobEvents
from pixelmill.jobs.notify import Notifier, wait_event
from pixelmill.jobs.store import Completion, JobStore
from pixelmill.jobs.notify import idle_until_work
from pixelmill.jobs.reaping import ReapClock, reap_expired_jobs
from pixelmill.jobs.supervisor import stop_within
from pixelmill.jobs.worker import default_worker_id
from pixelmill.settings import Settings

log = logging.getLogger(__name__)

OPENAI_MARKER = "openai-request:"
"""Prefix of the ``upstream_id`` written before a synchronous OpenAI-style call is sent."""
_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"RIFF", "image/webp"))


def media_type(data: bytes) -> str:
    """The image type of ``data`` from its first bytes (PNG when unknown)."""
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), "image/png")


class _Lost(Exception):
    """The lease of the job was lost: another attempt owns it now; write nothing more."""


class _Held:
    """One job in flight: its lease state, as the heartbeat learns it."""

    def __init__(self, job: JobRecord):
        self.job = job
        self.cancel = asyncio.Event()
        self.lost = False
        self.progress: tuple[int, int] | None = None


class UpstreamWorker:
    """Runs the jobs routed to ``backend`` (see the module docstring)."""

    def __init__(self, settings: Settings, store: JobStore, backend: Backend, results, notifier: Notifier,
                 events: JobEvents, worker_id: str | None = None):
        self.settings = settings
        self.store = store
        self.backend = backend
        self.results = results
        self.notifier = notifier
        self.events = events
        self.id = f"{worker_id or settings.worker_id or default_worker_id()}/upstream:{backend.name}"
        notifier.add_worker(self.id)
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._reap = ReapClock(settings)
        self.client = None

    @property
    def unavailable(self) -> None:
        """An upstream worker never makes the local fleet unavailable."""
        return None

    async def run(self) -> None:
        """Claim and run jobs until :meth:`stop`; then wait for (or release) those in flight."""
        self.client = client_for(self.backend)
        try:
            while not self._stop.is_set():
                await self._reap_if_due()
                free = self.backend.concurrency - len(self._tasks)
                jobs = []
                if free > 0:
                    try:
                        jobs = await asyncio.to_thread(self.store.claim, self.id, lease_s=self.settings.lease_s,
                                                       limit=free, route=self.backend.name)
                    except Exception:  # the store is down: look again later, never die
                        log.exception("upstream worker %s: claim failed", self.id)
                for job in jobs:
                    task = asyncio.create_task(self._run_job(job))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                if not jobs:
                    await idle_until_work(self.notifier, self._stop, self.settings.poll_interval_s)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            await self.client.aclose()
            log.info("upstream worker %s: stopped", self.id)

    async def _reap_if_due(self) -> None:
        if self._reap.due():
            try:
                await reap_expired_jobs(self.store, self.notifier, self.events)
            except Exception:  # the store is down: the next interval tries again, never die
                log.exception("upstream worker %s: reaping failed", self.id)

    def stop(self) -> None:
        self._stop.set()
        self.notifier.work_available()

    def abort(self) -> None:
        """Stop now: jobs in flight go back to the queue, keeping their upstream ids."""
        self.stop()
        for task in list(self._tasks):
            task.cancel()

    async def shutdown(self, task: asyncio.Task, grace_s: float) -> None:
        """Let jobs in flight finish for ``grace_s``, then release them (resumed later)."""
        await stop_within(task, grace_s, stop=self.stop, abort=self.abort)

    # ------------------------------------------------------------------ one job
    async def _run_job(self, job: JobRecord) -> None:
        held = _Held(job)
        self.notifier.job_changed(job.id)
        self.events.started(job)
        beat = asyncio.create_task(self._heartbeat(held))
        try:
            await self._serve(held)
        except _Lost:
            log.warning("job %s: lease lost (attempt %d); leaving it to its new owner", job.id, job.attempt)
        except UpstreamError as exc:
            log.warning("job %s failed upstream (%s): %s", job.id, exc.code, exc.message)
            await self._write("fail", held, code=exc.code, message=exc.message)
        except asyncio.CancelledError:
            # Shutdown: back to the queue with its upstream id, without counting an attempt.
            await asyncio.shield(self._write("release", held))
            raise
        except Exception as exc:  # a fault of ours: fail clearly rather than retry and pay twice
            log.exception("job %s: the upstream worker failed", job.id)
            await self._write("fail", held, code="gateway_error", message=f"{type(exc).__name__}: {exc}")
        finally:
            beat.cancel()
            self.notifier.job_changed(job.id)
        final = await asyncio.to_thread(self.store.get, job.id)
        if final.status.terminal and final.worker == self.id:
            self.events.completed(final)

    async def _write(self, method: str, held: _Held, **kwargs) -> bool:
        if held.lost:
            return False
        job = held.job
        return await asyncio.to_thread(getattr(self.store, method), job.id, self.id, job.attempt, **kwargs)

    async def _serve(self, held: _Held) -> None:
        if isinstance(self.client, ReplicateClient):
            await self._prediction(held, self.client)
        else:
            await self._synchronous(held, self.client)

    async def _record(self, held: _Held, upstream_id: str) -> None:
        job = held.job
        if not await asyncio.to_thread(self.store.record_upstream, job.id, self.id, job.attempt, upstream_id):
            held.lost = True
            raise _Lost()

    async def _prediction(self, held: _Held, client: ReplicateClient) -> None:
        job = held.job
        upstream_id = job.upstream_id
        if upstream_id is None:
            upstream_id = await client.create(job.request)
            try:
                await self._record(held, upstream_id)  # committed before any wait: a restart resumes it
            except _Lost:  # another attempt owns the job and will create its own: stop paying for this one
                await client.cancel(upstream_id)
                raise
            log.info("job %s: upstream %s prediction %s created", job.id, self.backend.name, upstream_id)
        else:
            log.info("job %s: resuming upstream %s prediction %s", job.id, self.backend.name, upstream_id)
        deadline = time.monotonic() + self.backend.max_wait_s
        cancel_sent = False
        while True:
            if held.lost:
                raise _Lost()
            if held.cancel.is_set() and not cancel_sent:
                await client.cancel(upstream_id)
                cancel_sent = True
            poll = await client.poll(upstream_id)
            held.progress = poll.progress or held.progress
            if poll.status == "succeeded":
                images = [await client.download(location) for location in poll.outputs]
                return await self._complete(held, images)
            if poll.status == "canceled" and cancel_sent:
                await self._write("mark_canceled", held)
                return
            if poll.status in ("failed", "canceled"):
                raise client.error("upstream_failed", poll.error or "the prediction failed")
            if time.monotonic() > deadline:
                await client.cancel(upstream_id)
                raise client.error("upstream_timeout", f"prediction {upstream_id} did not finish in "
                                   f"{self.backend.max_wait_s:g} s; it was canceled upstream")
            if cancel_sent:
                await asyncio.sleep(self.backend.poll_interval_s)
            else:
                await wait_event(held.cancel, self.backend.poll_interval_s)

    async def _synchronous(self, held: _Held, client: OpenAIClient) -> None:
        job = held.job
        if job.upstream_id is not None:
            raise client.error("upstream_interrupted", (
                "the gateway stopped while its synchronous request was in flight; the request is not sent "
                "again, so it is never paid twice (submit the job again to retry)"))
        await self._record(held, f"{OPENAI_MARKER}{uuid.uuid4().hex}")
        call = asyncio.ensure_future(client.generate(job.request))
        canceled = asyncio.ensure_future(held.cancel.wait())
        try:
            await asyncio.wait({call, canceled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            canceled.cancel()
        if not call.done():
            # The Images API cannot cancel: dropping the connection is all there is.
            call.cancel()
            await self._write("mark_canceled", held)
            return
        await self._complete(held, call.result())

    async def _complete(self, held: _Held, images: list[bytes]) -> None:
        job = held.job
        if held.cancel.is_set():
            await self._write("mark_canceled", held)
            return
        if not images:
            raise UpstreamError("upstream_error", f"upstream {self.backend.name!r}: the job succeeded with no images")
        ids = await asyncio.to_thread(self.results.put_many, [(data, media_type(data)) for data in images])
        request = job.request
        seeds = [(request.seed or 0) + i for i in range(len(ids))]
        cost = self.backend.price(request.width, request.height, len(ids))
        completion = Completion(job.id, job.attempt, ids, seeds, None, request.scheduler or "upstream",
                                request.width, request.height, upstream_cost=cost)
        stored = await asyncio.to_thread(self.store.complete_batch, self.id, [completion])
        if stored.get(job.id) is None:
            held.lost = True

    async def _heartbeat(self, held: _Held) -> None:
        job = held.job
        while True:
            await asyncio.sleep(min(self.settings.heartbeat_s, self.backend.poll_interval_s))
            try:
                answers = await asyncio.to_thread(
                    self.store.heartbeats, [(job.id, job.attempt)], self.id, lease_s=self.settings.lease_s,
                    progress=held.progress)
            except Exception:
                log.exception("job %s: heartbeat failed", job.id)
                continue
            answer = answers.get(job.id)
            if answer is None:
                held.lost = True
                return
            if answer:
                held.cancel.set()
            self.notifier.job_progressed(job.id)
            if held.progress:
                self.events.progress(job, *held.progress)

"""Live previews in the job store and on the way to clients (fake backends, no model).

The store part runs on SQLite and PostgreSQL; the worker and SSE part on SQLite with a
fake backend that reports a preview with every step.
"""

from __future__ import annotations

import asyncio
import base64
import io
from datetime import datetime, timedelta, timezone

from PIL import Image

from pixelmill.api.native.events import job_events
from pixelmill.core.types import GenerationRequest, JobStatus, Progress
from pixelmill.jobs.previews import PreviewBuffer, media_type_of
from pixelmill.jobs.store import Completion, JobStore
from tests.support.backends.base import FakeBackend
from tests.unit.jobs.test_worker_backends import run_with_worker, services_for, submit, until


def jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buffer, "JPEG")
    return buffer.getvalue()


def running(store: JobStore, n: int = 1):
    for i in range(n):
        store.submit(GenerationRequest(prompt=f"p{i}", steps=4))
    return store.claim("w1", lease_s=60, limit=n)


def beat(store: JobStore, job, previews, worker: str = "w1", attempt: int | None = None):
    held = [(job.id, job.attempt if attempt is None else attempt)]
    return store.heartbeats(held, worker, lease_s=60, progress=(2, 4), previews=previews)


def test_the_heartbeat_stores_the_latest_preview_of_a_running_job(store: JobStore):
    (job,) = running(store)
    assert store.latest_preview(job.id) is None
    beat(store, job, {job.id: (2, jpeg(10))})
    beat(store, job, {job.id: (3, jpeg(200))})  # replaces the older one in place
    preview = store.latest_preview(job.id)
    assert (preview.step, preview.attempt, preview.media_type) == (3, job.attempt, "image/jpeg")
    assert preview.data == jpeg(200)
    assert preview.data_url() == "data:image/jpeg;base64," + base64.b64encode(jpeg(200)).decode()
    beat(store, job, None)  # a beat without a preview keeps it
    assert store.latest_preview(job.id).step == 3


def test_only_the_lease_holder_writes_a_preview(store: JobStore):
    (job,) = running(store)
    beat(store, job, {job.id: (1, jpeg(10))}, worker="w2")
    beat(store, job, {job.id: (1, jpeg(10))}, attempt=job.attempt + 1)
    assert store.latest_preview(job.id) is None


def test_previews_go_when_the_job_leaves_running(store: JobStore):
    jobs = running(store, 5)
    for job in jobs:
        beat(store, job, {job.id: (2, jpeg(50))})
    done, failed, canceled, released, lost = jobs
    store.complete_batch("w1", [Completion(done.id, done.attempt, [], [], 0.1, "euler", 64, 64)])
    store.fail(failed.id, "w1", failed.attempt, code="backend_error", message="boom", retry=True)
    store.cancel(canceled.id)
    store.mark_canceled(canceled.id, "w1", canceled.attempt)
    store.release(released.id, "w1", released.attempt)
    store.reap_expired(now=datetime.now(timezone.utc) + timedelta(hours=1))  # and `lost`'s lease ran out
    assert [store.latest_preview(job.id) for job in jobs] == [None] * 5
    with store.engine.connect() as conn:  # gone, not only hidden
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM job_previews").scalar() == 0


def test_a_preview_of_an_earlier_attempt_is_never_shown(store: JobStore):
    (job,) = running(store)
    beat(store, job, {job.id: (3, jpeg(10))})
    with store.engine.begin() as conn:  # as if the row had survived a requeue and a new claim
        conn.exec_driver_sql("UPDATE jobs SET attempt = attempt + 1")
    assert store.latest_preview(job.id) is None


def test_the_buffer_keeps_the_newest_and_releases_once_a_second_per_job():
    now = [0.0]
    buffer = PreviewBuffer(gap_s=1.0, clock=lambda: now[0])
    buffer.offer("a", 1, jpeg(1))
    buffer.offer("a", 2, jpeg(2))
    buffer.offer("b", 2, b"not an image")  # never stored
    assert buffer.take(["a", "b"]) == {"a": (2, jpeg(2))}
    buffer.offer("a", 3, jpeg(3))
    now[0] = 0.5
    assert buffer.take(["a"]) == {}  # too soon: kept for later
    now[0] = 1.0
    assert buffer.take(["a"]) == {"a": (3, jpeg(3))}
    assert buffer.take(["a"]) == {}
    assert media_type_of(b"\x89PNG\r\n\x1a\n...") == "image/png" and media_type_of(b"GIF89a") is None


class Previewing(FakeBackend):
    """Reports a preview of each request with every step (a grey that brightens)."""

    async def generate_batch(self, requests, *, on_progress=None, cancel=None):
        def with_previews(progress: Progress) -> None:
            images = {i: jpeg(progress.step * 40) for i in range(len(requests))}
            on_progress(Progress(step=progress.step, total=progress.total, previews=images))

        return await super().generate_batch(requests, on_progress=with_previews if on_progress else None,
                                            cancel=cancel)


def test_previews_reach_the_sse_stream_and_latest_preview(tmp_path):
    services = services_for(tmp_path, Previewing(step_s=0.15))
    seen: dict[str, list] = {"events": [], "latest": []}

    async def scenario(services):
        job = await submit(services, steps=12)
        await until(services, job.id, lambda j: j.status is JobStatus.running)

        async def stream():
            async for event, data, _ in job_events(services.jobs, job.id, "http://test"):
                if event:
                    seen["events"].append((event, data))

        async def poll():
            while (await services.jobs.get(job.id)).status is JobStatus.running:
                seen["latest"].append(await services.jobs.latest_preview(job.id))
                await asyncio.sleep(0.1)
            seen["latest"].append(await services.jobs.latest_preview(job.id))

        await asyncio.wait_for(asyncio.gather(stream(), poll()), 20)

    run_with_worker(services, scenario)
    previews = [data for event, data in seen["events"] if event == "preview"]
    assert previews, seen["events"]
    assert seen["events"][-1][0] == "succeeded"
    steps = [data["step"] for data in previews]
    assert steps == sorted(set(steps)) and all(0 < step <= 12 for step in steps)
    assert len(steps) <= 12 * 0.15 + 2  # about one stored per second, not one per step
    header, encoded = previews[-1]["image"].split(",", 1)
    assert header == "data:image/jpeg;base64" and previews[-1]["total"] == 12
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "JPEG"
    stored = [data for data in seen["latest"] if data is not None]
    assert stored and all(media_type_of(data) == "image/jpeg" for data in stored)
    assert seen["latest"][-1] is None  # finished: no preview any more


def test_a_backend_without_previews_stores_none(tmp_path):
    services = services_for(tmp_path, FakeBackend(step_s=0.02))

    async def scenario(services):
        job = await submit(services, steps=6)
        events = [event async for event, _, _ in job_events(services.jobs, job.id, "http://test") if event]
        assert "preview" not in events and events[-1] == "succeeded"

    run_with_worker(services, scenario)
    with services.store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM job_previews").scalar() == 0


def test_with_previews_off_the_event_stream_does_not_look_for_them(tmp_path, monkeypatch):
    services = services_for(tmp_path, Previewing(step_s=0.05), preview_steps=0)
    looks = []
    monkeypatch.setattr(services.store, "latest_preview", lambda job_id: looks.append(job_id))

    async def scenario(services):
        job = await submit(services, steps=6)
        events = [event async for event, _, _ in job_events(services.jobs, job.id, "http://test") if event]
        assert "progress" in events and "preview" not in events and events[-1] == "succeeded"

    run_with_worker(services, scenario)
    assert looks == []

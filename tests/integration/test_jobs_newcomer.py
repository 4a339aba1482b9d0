"""The job API as a newcomer meets it: finished progress, queue places in lists, honest
cancels (409 for a finished job) and a batch archive that says whether it is complete."""

from __future__ import annotations

import io
import json
import time
import zipfile
from datetime import datetime, timezone

import httpx
import pytest
import sqlalchemy as sa

from pixelmill.core.types import GenerationRequest, JobRecord, JobStatus, Mode
from pixelmill.jobs.store import JobStore
from pixelmill.jobs.views import job_public

JOB = {"prompt": "a kettle", "width": 64, "height": 64, "steps": 2}
SLOW = JOB | {"prompt": "a slow kettle", "steps": 150, "width": 256, "height": 256}


def submit(server, body: dict) -> dict:
    response = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def get(server, job_id: str) -> dict:
    return httpx.get(f"{server.url}/v1/jobs/{job_id}").json()


def wait_for(server, job_id: str, statuses=("succeeded", "failed", "canceled"), timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := get(server, job_id))["status"] not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.05)
    return job


def cancel(server, job_id: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/jobs/{job_id}/cancel")


def running_blocker(server) -> str:
    """A long job holding the server's one worker, so that what comes next stays queued."""
    job_id = submit(server, SLOW)["id"]
    wait_for(server, job_id, statuses=("running",))
    return job_id


def _record(status: JobStatus, step: int, total: int) -> JobRecord:
    request = GenerationRequest(prompt="x", steps=20, width=64, height=64)
    return JobRecord(id="job_x", status=status, request=request, created_at=datetime.now(timezone.utc),
                     mode=Mode.txt2img, steps=20, progress_step=step, progress_total=total)


@pytest.mark.parametrize(("status", "step", "total", "expected"), [
    # Progress is sampled every --progress-interval-s: fast last steps leave step 1 of 20 stored.
    (JobStatus.succeeded, 1, 20, {"step": 20, "total": 20}),
    (JobStatus.succeeded, 0, 0, {"step": 20, "total": 20}),  # never sampled: the job's steps
    (JobStatus.running, 1, 20, {"step": 1, "total": 20}),
    (JobStatus.canceled, 3, 20, {"step": 3, "total": 20}),   # where it stopped
])
def test_a_succeeded_jobs_progress_is_complete(status, step, total, expected):
    assert job_public(_record(status, step, total)).model_dump()["progress"] == expected


def test_a_succeeded_job_over_http_shows_its_progress_complete(server):
    done = wait_for(server, submit(server, JOB | {"steps": 20})["id"])
    assert done["status"] == "succeeded" and done["progress"] == {"step": 20, "total": 20}
    listed = httpx.get(f"{server.url}/v1/jobs", params={"status": "succeeded", "limit": 200}).json()["data"]
    assert next(job for job in listed if job["id"] == done["id"])["progress"] == done["progress"]


def test_queue_positions_of_a_page_take_one_query(tmp_path):
    store = JobStore.open(str(tmp_path / "jobs.db"))
    request = GenerationRequest(prompt="x", steps=2, width=64, height=64)
    submitted = [store.submit(request.model_copy(update={"seed": i}), priority=i % 3)[0] for i in range(6)]
    store.claim("w1", lease_s=60)  # one of them runs: it has no place any more
    ids = [job.id for job in submitted]
    expected = {job_id: store.queue_position(job_id) for job_id in ids}
    statements: list[str] = []

    def record(conn, cursor, statement, *rest) -> None:
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        positions = store.queue_positions(ids)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
        store.engine.dispose()
    assert positions == {job_id: place for job_id, place in expected.items() if place is not None}
    assert sorted(positions.values()) == [1, 2, 3, 4, 5]
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert store.queue_positions([]) == {}  # an empty page asks nothing


def test_listed_queued_jobs_show_their_queue_position(server):
    blocker = running_blocker(server)
    queued = [submit(server, JOB | {"seed": seed, "priority": priority})["id"]
              for seed, priority in ((1, 0), (2, 5), (3, 0))]
    try:
        singles = {job_id: get(server, job_id)["queue_position"] for job_id in queued}
        listed = httpx.get(f"{server.url}/v1/jobs", params={"status": "queued", "limit": 200}).json()["data"]
        positions = {job["id"]: job["queue_position"] for job in listed if job["id"] in queued}
        assert positions == singles
        assert positions[queued[1]] == 1 and positions[queued[0]] < positions[queued[2]]
    finally:
        for job_id in [*queued, blocker]:
            cancel(server, job_id)
    wait_for(server, blocker, timeout=60)


def test_cancelling_a_finished_job_is_409_and_a_canceled_one_is_idempotent(server):
    done = wait_for(server, submit(server, JOB | {"seed": 9})["id"])
    response = cancel(server, done["id"])
    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("conflict", "job_id")
    assert "succeeded" in error["message"]
    assert get(server, done["id"])["status"] == "succeeded"

    blocker = running_blocker(server)
    try:
        queued = submit(server, JOB | {"seed": 10})["id"]
        first, again = cancel(server, queued), cancel(server, queued)
        assert (first.status_code, again.status_code) == (200, 200)
        assert first.json()["status"] == again.json()["status"] == "canceled"
        assert first.json()["finished_at"] == again.json()["finished_at"]
    finally:
        cancel(server, blocker)
    assert wait_for(server, blocker, timeout=60)["status"] == "canceled"
    assert cancel(server, blocker).status_code == 200  # a canceled job: still 200


def _manifest(archive: httpx.Response) -> tuple[dict, list[str]]:
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        return json.loads(zf.read("manifest.json")), [n for n in zf.namelist() if n != "manifest.json"]


def test_an_unfinished_batch_archive_is_409_unless_partial(server):
    body = {"requests": [JOB | {"steps": 1}, SLOW]}
    batch = httpx.post(f"{server.url}/v1/batches", json=body, timeout=30).json()
    quick, slow = batch["job_ids"]
    url = f"{server.url}/v1/batches/{batch['id']}/archive"
    try:
        wait_for(server, quick)
        wait_for(server, slow, statuses=("running",))
        refused = httpx.get(url, timeout=60)
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "conflict" and error["param"] == "partial"
        assert "1 running" in error["message"] and "1 succeeded" in error["message"]

        partial = httpx.get(url, params={"partial": "true"}, timeout=60)
        assert partial.status_code == 200
        assert partial.headers["x-pixelmill-archive-complete"] == "false"
        manifest, images = _manifest(partial)
        assert manifest["complete"] is False and len(images) == 1
        assert manifest["files"][0]["job_id"] == quick
    finally:
        cancel(server, slow)
    wait_for(server, slow, timeout=60)
    whole = httpx.get(url, timeout=60)
    assert whole.status_code == 200 and whole.headers["x-pixelmill-archive-complete"] == "true"
    manifest, images = _manifest(whole)
    assert manifest["complete"] is True and len(images) == 1
    assert manifest["counts"]["succeeded"] == 1 and manifest["counts"]["canceled"] == 1


def test_an_unknown_query_parameter_on_the_native_api_is_400_naming_it(server):
    response = httpx.get(f"{server.url}/v1/jobs", params={"limt": "5"}, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "limt" and "limit" in error["message"]  # names what the route takes
    assert httpx.get(f"{server.url}/v1/jobs", params={"limit": "5"}, timeout=10).status_code == 200

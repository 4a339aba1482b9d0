"""The native job API over real HTTP: submit, follow, cancel, batches, webhooks."""

from __future__ import annotations

import io
import json
import time
import zipfile

import httpx
import pytest

from pixelmill.outbound.webhooks import verify
from tests.conftest import WEBHOOK_SECRET
from tests.support.images import decode
from tests.support.receiver import Receiver

JOB = {"prompt": "a kettle", "width": 64, "height": 64, "steps": 2}


def submit(server, body: dict | None = None, **headers) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/jobs", json=body or JOB, headers=headers, timeout=30)


def wait_for(server, job_id: str, statuses=("succeeded", "failed", "canceled"), timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']}")


def events_of(server, job_id: str) -> list[tuple[str, dict]]:
    events, name = [], None
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job_id}/events", timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    return events


def test_submit_returns_202_and_the_job_succeeds(server):
    response = submit(server)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert job["status"] in ("queued", "running", "succeeded")
    done = wait_for(server, job["id"])
    assert done["status"] == "succeeded" and done["attempt"] == 1
    assert done["images"] == 1 and done["gpu_seconds"] > 0 and done["worker"]
    assert (done["model"], done["mode"], done["width"], done["height"], done["steps"]) == ("demo", "txt2img", 64, 64, 2)
    image = httpx.get(done["results"][0]["url"])
    assert image.status_code == 200 and decode(image.content).size == (64, 64)


def test_invalid_job_is_400_and_nothing_is_queued(server):
    before = httpx.get(f"{server.url}/v1/jobs", params={"limit": 200}).json()["data"]
    response = submit(server, JOB | {"width": 65})
    assert response.status_code == 400 and response.json()["error"]["param"] == "width"
    after = httpx.get(f"{server.url}/v1/jobs", params={"limit": 200}).json()["data"]
    assert [j["id"] for j in after] == [j["id"] for j in before]


def test_idempotency_key(server):
    first = submit(server, **{"Idempotency-Key": "order-17"})
    again = submit(server, **{"Idempotency-Key": "order-17"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = submit(server, JOB | {"prompt": "something else"}, **{"Idempotency-Key": "order-17"})
    assert other.status_code == 400
    assert other.json()["error"]["param"] == "Idempotency-Key"


def test_sse_events_in_order_with_final_urls(server):
    # Progress is sampled from the store (every 0.1 s per job on this server), so a slow enough
    # job shows several steps; they must come in order, each newer than the last.
    job = submit(server, JOB | {"steps": 40, "width": 256, "height": 256}).json()
    events = events_of(server, job["id"])
    names = [name for name, _ in events]
    assert names[-1] == "succeeded"
    assert "started" in names and names.index("started") < names.index("progress")
    steps = [data["step"] for name, data in events if name == "progress"]
    assert len(steps) >= 3 and steps == sorted(set(steps)) and steps[-1] <= 40
    assert events[-1][1]["results"][0]["url"].endswith(events[-1][1]["results"][0]["url"].rsplit("/", 1)[1])


def test_cancel_running_job_stops_it(server):
    job = submit(server, JOB | {"steps": 150, "width": 256, "height": 256}).json()
    wait_for(server, job["id"], statuses=("running",))
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    canceled = httpx.post(f"{server.url}/v1/jobs/{job['id']}/cancel").json()
    assert canceled["status"] in ("running", "canceled")
    done = wait_for(server, job["id"], timeout=30)
    assert done["status"] == "canceled"
    assert done["results"] == [] and done["progress"]["step"] < 150


def test_cancel_queued_job_is_immediate_and_final(server):
    blocker = submit(server, JOB | {"steps": 60, "width": 256, "height": 256}).json()
    queued = submit(server, JOB | {"prompt": "never"}).json()
    canceled = httpx.post(f"{server.url}/v1/jobs/{queued['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    httpx.post(f"{server.url}/v1/jobs/{blocker['id']}/cancel")
    assert wait_for(server, queued["id"])["status"] == "canceled"


def test_list_filters_and_pagination(server):
    ids = [submit(server, JOB | {"seed": seed}).json()["id"] for seed in range(3)]
    for job_id in ids:
        wait_for(server, job_id)
    page = httpx.get(f"{server.url}/v1/jobs", params={"limit": 2, "status": "succeeded"}).json()
    assert len(page["data"]) == 2 and page["next_cursor"]
    assert all(job["status"] == "succeeded" for job in page["data"])
    rest = httpx.get(f"{server.url}/v1/jobs", params={"limit": 2, "status": "succeeded", "cursor": page["next_cursor"]}).json()
    assert not {j["id"] for j in page["data"]} & {j["id"] for j in rest["data"]}
    future = httpx.get(f"{server.url}/v1/jobs", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert future["data"] == []


def test_unknown_job_is_404(server):
    assert httpx.get(f"{server.url}/v1/jobs/job_nope").status_code == 404
    assert httpx.get(f"{server.url}/v1/jobs/job_nope/events").status_code == 404


def test_batch_of_prompts_times_seeds_and_its_zip(server):
    body = {"request": JOB, "prompts": ["a red cube", "a blue ball"], "seeds": {"start": 10, "count": 2}}
    batch = httpx.post(f"{server.url}/v1/batches", json=body, timeout=30).json()
    assert batch["size"] == 4
    for job_id in batch["job_ids"]:
        wait_for(server, job_id)
    counts = httpx.get(f"{server.url}/v1/batches/{batch['id']}").json()["counts"]
    assert counts["succeeded"] == 4
    archive = httpx.get(f"{server.url}/v1/batches/{batch['id']}/archive", timeout=60)
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        files = manifest["files"]
        assert [(f["prompt"], f["seed"]) for f in files] == [
            ("a red cube", 10), ("a red cube", 11), ("a blue ball", 10), ("a blue ball", 11)
        ]
        for item in files:
            assert decode(zf.read(item["file"])).size == (64, 64)
            assert item["job_id"] in batch["job_ids"]


def test_webhook_is_signed_and_verifiable(server):
    receiver = Receiver()
    try:
        body = JOB | {"webhook": f"{receiver.url}/hook", "webhook_events": ["started", "completed"]}
        job = submit(server, body).json()
        done = wait_for(server, job["id"])
        deadline = time.monotonic() + 10
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        events = [r["headers"]["X-Pixelmill-Event"] for r in receiver.requests]
        assert events == ["started", "completed"]
        for request in receiver.requests:
            headers = request["headers"]
            assert verify(WEBHOOK_SECRET.encode(), headers["X-Pixelmill-Timestamp"], headers["X-Pixelmill-Signature"], request["body"])
            assert not verify(b"wrong", headers["X-Pixelmill-Timestamp"], headers["X-Pixelmill-Signature"], request["body"])
        final = json.loads(receiver.requests[-1]["body"])
        assert final["id"] == done["id"] and final["status"] == "succeeded"
        while time.monotonic() < deadline:
            state = httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["webhook_state"] or {}
            if "completed" in state:
                break
            time.sleep(0.05)
        assert state["completed"]["ok"] is True and state["started"]["ok"] is True
    finally:
        receiver.close()


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http://"])
def test_bad_webhook_urls_are_refused(server, url):
    response = submit(server, JOB | {"webhook": url})
    assert response.status_code == 400 and response.json()["error"]["param"] == "webhook"

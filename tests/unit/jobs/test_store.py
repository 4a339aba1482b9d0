"""JobStore on SQLite and PostgreSQL: submitting, reading, life cycle, guards, batches.

Concurrency (claims, idempotency races) is in test_claims.py; schema, engines and
blobs in test_db.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pixelmill.core.types import GenerationRequest, JobStatus, Mode, WebhookSpec
from pixelmill.core.errors import InvalidRequest, NotFound, Overloaded
from pixelmill.jobs.store import Completion, JobStore

LATER = timedelta(hours=1)


def req(prompt: str = "a fox", **fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": prompt, "steps": 4, "width": 64, "height": 64, **fields})


def claim_one(store: JobStore, worker: str = "w1", lease_s: float = 60):
    (job,) = store.claim(worker, lease_s=lease_s)
    return job


def reap_all(store: JobStore) -> list[str]:
    return store.reap_expired(now=datetime.now(timezone.utc) + LATER)


def complete(store: JobStore, job_id: str, worker: str, attempt: int, *, result_ids: list[str],
             seeds: list[int], model: str | None = None, gpu_seconds: float = 1.0) -> bool:
    """Complete one job the way the worker does (a batch of one); False for a stale attempt."""
    done = Completion(job_id, attempt, result_ids, seeds, gpu_seconds, "euler", 64, 64, model=model)
    return store.complete_batch(worker, [done])[job_id] is not None


# ---- submit / get / list -------------------------------------------------------------


def test_submit_and_get_round_trip(store: JobStore):
    request = req(model="demo", mode=Mode.img2img, init_image=b"\x89PNG", steps=7)
    webhook = WebhookSpec(url="https://example.test/hook", events=("completed", "progress"))
    job, created = store.submit(request, webhook=webhook, priority=3, api_key_id="k1", max_attempts=5)
    assert created and job.id.startswith("job_") and 26 <= len(job.id) <= 32
    assert job.status is JobStatus.queued and job.attempt == 0 and job.max_attempts == 5
    assert (job.model, job.mode, job.width, job.height, job.steps) == ("demo", Mode.img2img, 64, 64, 7)
    again = store.get(job.id)
    # Read back without its input image (test_inputs.py); a claim brings it back.
    assert again == job and again.request == request.model_copy(update={"init_image": None})
    assert again.webhook == webhook and claim_one(store).request == request
    assert again.created_at.tzinfo is not None and again.created_at.utcoffset() == timedelta(0)
    assert abs(again.created_at - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_get_unknown_job(store: JobStore):
    with pytest.raises(NotFound) as info:
        store.get("job_nope")
    assert info.value.param == "job_id"


def test_list_is_newest_first_with_keyset_pages(store: JobStore):
    ids = [store.submit(req(f"p{i}"))[0].id for i in range(7)]
    pages, cursor = [], None
    while True:
        page, cursor = store.list_jobs(limit=3, cursor=cursor)
        pages.append([job.id for job in page])
        if cursor is None:
            break
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [job_id for page in pages for job_id in page] == ids[::-1]


def test_list_filters(store: JobStore):
    first, _ = store.submit(req("old"))
    cut = datetime.now(timezone.utc)
    batch_id, batch = store.submit_batch([req("b1"), req("b2")])
    claimed = claim_one(store)
    assert claimed.id == first.id
    assert [j.id for j in store.list_jobs(status=JobStatus.running)[0]] == [first.id]
    assert {j.id for j in store.list_jobs(batch_id=batch_id)[0]} == {j.id for j in batch}
    assert {j.id for j in store.list_jobs(since=cut)[0]} == {j.id for j in batch}
    assert store.list_jobs(status=JobStatus.failed) == ([], None)


def test_list_rejects_bad_cursor_and_limit(store: JobStore):
    with pytest.raises(InvalidRequest) as info:
        store.list_jobs(cursor="not-a-cursor!")
    assert info.value.param == "cursor"
    with pytest.raises(InvalidRequest) as info:
        store.list_jobs(limit=0)
    assert info.value.param == "limit"


# ---- idempotency and overload ------------------------------------------------------------


def test_idempotency_same_body_same_job_different_body_error(store: JobStore):
    job, created = store.submit(req(), idempotency_key="k-1")
    again, created_again = store.submit(req(), idempotency_key="k-1")
    assert created and not created_again and again.id == job.id
    with pytest.raises(InvalidRequest) as info:
        store.submit(req("another prompt"), idempotency_key="k-1")
    assert info.value.param == "Idempotency-Key" and "different request" in info.value.message
    with pytest.raises(InvalidRequest):
        store.submit(req(), idempotency_key="k-1", priority=5)
    assert store.count(JobStatus.queued) == 1


def test_idempotency_keys_are_per_api_key(store: JobStore):
    mine, created = store.submit(req(), idempotency_key="order-1", api_key_id="key_a")
    # Another tenant's same key is another job, with any body: it can neither block nor probe.
    theirs, created_theirs = store.submit(req("their body"), idempotency_key="order-1", api_key_id="key_b")
    anonymous, created_anonymous = store.submit(req(), idempotency_key="order-1")
    assert created and created_theirs and created_anonymous
    assert len({mine.id, theirs.id, anonymous.id}) == 3
    assert store.submit(req(), idempotency_key="order-1", api_key_id="key_a") == (mine, False)
    assert store.submit(req("their body"), idempotency_key="order-1", api_key_id="key_b") == (theirs, False)
    assert store.submit(req(), idempotency_key="order-1") == (anonymous, False)
    with pytest.raises(InvalidRequest):  # within one tenant a key still means one body
        store.submit(req("their body"), idempotency_key="order-1", api_key_id="key_a")
    assert store.count(JobStatus.queued) == 3


def test_overload_stores_nothing(store: JobStore):
    store.submit(req(), idempotency_key="first")
    store.submit(req())
    with pytest.raises(Overloaded) as info:
        store.submit(req(), max_queued=2)
    assert info.value.retry_after >= 1
    with pytest.raises(Overloaded):
        store.submit_batch([req(), req()], max_queued=3)
    assert store.count(JobStatus.queued) == 2 and len(store.list_jobs()[0]) == 2
    # A replay of an accepted request is answered even when the queue is full.
    assert store.submit(req(), idempotency_key="first", max_queued=2)[1] is False
    claim_one(store)
    assert store.submit(req(), max_queued=2)[1] is True


# ---- queue order ----------------------------------------------------------------------


def test_claim_order_is_priority_then_age_and_queue_position(store: JobStore):
    low1 = store.submit(req("low1"))[0]
    high = store.submit(req("high"), priority=10)[0]
    low2 = store.submit(req("low2"))[0]
    mid = store.submit(req("mid"), priority=5)[0]
    order = [high, mid, low1, low2]
    assert [store.queue_position(job.id) for job in order] == [1, 2, 3, 4]
    claimed = store.claim("w1", lease_s=60, limit=2)
    assert [job.id for job in claimed] == [high.id, mid.id]
    assert store.queue_position(high.id) is None and store.queue_position(low1.id) == 1
    assert [job.id for job in store.claim("w2", lease_s=60, limit=5)] == [low1.id, low2.id]
    assert store.claim("w3", lease_s=60) == []


def test_claim_sets_lease_and_attempt(store: JobStore):
    job = store.submit(req())[0]
    claimed = claim_one(store, "w1", lease_s=30)
    assert claimed.id == job.id and claimed.status is JobStatus.running
    assert claimed.attempt == 1 and claimed.worker == "w1"
    assert claimed.started_at == claimed.heartbeat_at
    assert claimed.lease_expires_at - claimed.heartbeat_at == timedelta(seconds=30)
    assert store.count(JobStatus.running) == 1 and store.count(JobStatus.queued) == 0


def test_claim_with_batch_key_takes_jobs_of_the_same_key(store: JobStore):
    by_model = JobStore(store.engine, batch_key=lambda r: r.model)  # keys are computed at submit
    a1 = by_model.submit(req(model="a"))[0]
    b1 = by_model.submit(req(model="b"))[0]
    a2 = by_model.submit(req(model="a"))[0]
    a3 = by_model.submit(req(model="a", steps=9))[0]
    claimed = by_model.claim("w1", lease_s=60, limit=3, batch_key=by_model.batch_key)
    assert [job.id for job in claimed] == [a1.id, a2.id, a3.id]
    with pytest.raises(ValueError):  # another key function cannot apply to stored keys
        by_model.claim("w1", lease_s=60, limit=3, batch_key=lambda r: r.steps)
    b2 = by_model.submit(req(model="b", steps=9))[0]
    company = by_model.claim_matching("w1", lease_s=60, limit=5, batch_key=by_model.batch_key, key="b")
    assert [job.id for job in company] == [b1.id, b2.id]


# ---- worker updates --------------------------------------------------------------------


def test_heartbeat_progress_cancel_flag_and_lease_lost(store: JobStore):
    def beat(job_id: str, worker: str, attempt: int, **progress) -> bool | None:
        return store.heartbeats([(job_id, attempt)], worker, lease_s=60, **progress)[job_id]

    store.submit(req())
    job = claim_one(store, "w1")
    assert beat(job.id, "w1", 1, progress=(2, 4)) is False
    assert (store.get(job.id).progress_step, store.get(job.id).progress_total) == (2, 4)
    assert store.cancel(job.id).cancel_requested
    assert beat(job.id, "w1", 1) is True
    store.submit(req("second"))
    other = claim_one(store, "w1")
    assert set(reap_all(store)) == {job.id, other.id}
    assert store.get(other.id).status is JobStatus.queued
    assert store.get(job.id).status is JobStatus.canceled  # cancel was requested: not retried
    assert beat(other.id, "w1", 1) is None  # requeued: the lease is lost
    assert claim_one(store, "w2").attempt == 2
    assert beat(other.id, "w1", 1) is None
    assert beat(other.id, "w2", 2) is False


def test_heartbeats_of_a_batch_in_one_call(store: JobStore):
    for prompt in ("one", "two", "three"):
        store.submit(req(prompt))
    batch = store.claim("w1", lease_s=60, limit=3)
    assert len(batch) == 3
    store.cancel(batch[1].id)
    held = [(job.id, job.attempt) for job in batch]
    store.heartbeats([(batch[2].id, batch[2].attempt)], "w2", lease_s=60)  # another worker: changes nothing
    answers = store.heartbeats(held + [("no-such-job", 1)], "w1", lease_s=60, progress=(3, 8))
    assert answers == {batch[0].id: False, batch[1].id: True, batch[2].id: False, "no-such-job": None}
    assert {(store.get(job.id).progress_step, store.get(job.id).progress_total) for job in batch} == {(3, 8)}
    stale = store.heartbeats([(batch[0].id, batch[0].attempt + 1)], "w1", lease_s=60)
    assert stale == {batch[0].id: None}  # a stale attempt's lease is lost


def test_stale_attempt_cannot_complete(store: JobStore):
    job = store.submit(req())[0]
    claim_one(store, "w1")
    reap_all(store)
    newer = claim_one(store, "w2")
    assert newer.attempt == 2
    assert not complete(store, job.id, "w1", 1, result_ids=["x"], seeds=[1])
    current = store.get(job.id)
    assert current.status is JobStatus.running and current.worker == "w2" and current.result_ids == []
    assert complete(store, job.id, "w2", 2, result_ids=["r1", "r2"], seeds=[7, 8], gpu_seconds=2.5,
                    model="demo")
    done = store.get(job.id)
    assert done.status is JobStatus.succeeded and done.images == 2 and done.result_seeds == [7, 8]
    assert done.finished_at is not None and done.gpu_seconds == 2.5 and done.sampler == "euler"
    assert done.model == "demo"
    assert [j.id for j in store.ledger()] == [job.id]


def test_a_batch_completes_in_one_call_and_returns_the_stored_jobs(store: JobStore):
    for prompt in ("one", "two", "three"):
        store.submit(req(prompt))
    batch = store.claim("w1", lease_s=60, limit=3)
    reap_all(store)
    stolen = claim_one(store, "w2")  # batch[0], now attempt 2 under another worker
    assert stolen.id == batch[0].id
    store.claim("w1", lease_s=60, limit=2)  # batch[1] and batch[2] again, attempt 2 under w1

    def completion(job, attempt, result):
        return Completion(job.id, attempt, [result], [job.request.seed], 0.5, "euler", 64, 64, model="demo")

    done = store.complete_batch("w1", [completion(batch[0], 1, "a"), completion(batch[1], 2, "b"),
                                       completion(batch[2], 1, "stale")])
    assert done[batch[0].id] is None and done[batch[2].id] is None  # another worker's, a stale attempt
    assert done[batch[1].id] == store.get(batch[1].id)
    stored = store.get(batch[1].id)
    assert stored.status is JobStatus.succeeded and stored.result_ids == ["b"] and stored.gpu_seconds == 0.5
    assert stored.model == "demo" and stored.images == 1
    assert store.get(batch[0].id).status is JobStatus.running and store.get(batch[0].id).worker == "w2"
    assert store.get(batch[2].id).status is JobStatus.running and store.get(batch[2].id).result_ids == []


def test_reap_requeues_then_fails_worker_lost(store: JobStore):
    job = store.submit(req(), max_attempts=2)[0]
    fresh = store.submit(req("fresh"))[0]
    claim_one(store, "w1")
    claim_one(store, "w2", lease_s=3600 * 5)
    assert reap_all(store) == [job.id]
    requeued = store.get(job.id)
    assert requeued.status is JobStatus.queued and requeued.worker is None
    assert requeued.lease_expires_at is None and requeued.attempt == 1
    assert store.get(fresh.id).status is JobStatus.running
    claim_one(store, "w1")
    assert reap_all(store) == [job.id]
    failed = store.get(job.id)
    assert failed.status is JobStatus.failed and failed.error.code == "worker_lost"
    assert reap_all(store) == []


def test_terminal_states_never_change(store: JobStore):
    done = store.submit(req("done"))[0]
    claim_one(store, "w1")
    complete(store, done.id, "w1", 1, result_ids=["r"], seeds=[1])
    assert store.cancel(done.id) == store.get(done.id)
    assert store.get(done.id).status is JobStatus.succeeded
    canceled = store.cancel(store.submit(req("c"))[0].id)
    assert canceled.status is JobStatus.canceled and canceled.finished_at and canceled.error is None
    for job_id in (done.id, canceled.id):
        before = store.get(job_id)
        assert not complete(store, job_id, "w1", 1, result_ids=[], seeds=[])
        assert not store.fail(job_id, "w1", 1, code="x", message="y", retry=True)
        assert not store.mark_canceled(job_id, "w1", 1) and not store.release(job_id, "w1", 1)
        assert store.heartbeats([(job_id, 1)], "w1", lease_s=10) == {job_id: None}
        assert store.get(job_id) == before
    assert store.claim("w9", lease_s=60) == []


def test_cancel_running_then_mark_canceled(store: JobStore):
    job = store.submit(req())[0]
    claim_one(store, "w1")
    flagged = store.cancel(job.id)
    assert flagged.status is JobStatus.running and flagged.cancel_requested
    assert not store.mark_canceled(job.id, "w2", 1)
    assert store.mark_canceled(job.id, "w1", 1)
    final = store.get(job.id)
    assert final.status is JobStatus.canceled and final.result_ids == [] and final.finished_at


def test_release_does_not_use_an_attempt(store: JobStore):
    job = store.submit(req(), max_attempts=1)[0]
    claim_one(store, "w1")
    assert store.release(job.id, "w1", 1)
    released = store.get(job.id)
    assert released.status is JobStatus.queued and released.attempt == 0 and released.worker is None
    assert claim_one(store, "w2").attempt == 1


def test_fail_with_retry_until_attempts_run_out(store: JobStore):
    job = store.submit(req(), max_attempts=2)[0]
    claim_one(store, "w1")
    assert store.fail(job.id, "w1", 1, code="oom", message="out of memory", retry=True)
    assert store.get(job.id).status is JobStatus.queued
    claim_one(store, "w1")
    assert store.fail(job.id, "w1", 2, code="oom", message="out of memory", retry=True)
    failed = store.get(job.id)
    assert failed.status is JobStatus.failed and failed.error.code == "oom" and failed.attempt == 2


def test_webhook_state(store: JobStore):
    job = store.submit(req(), webhook=WebhookSpec(url="https://example.test/h"))[0]
    store.update_webhook_state(job.id, {"completed": {"attempts": 2, "status": 200}})
    assert store.get(job.id).webhook_state == {"completed": {"attempts": 2, "status": 200}}
    with pytest.raises(NotFound):
        store.update_webhook_state("job_missing", {})


# ---- batches ---------------------------------------------------------------------------------


def test_batch_submit_counts_and_streaming(store: JobStore):
    batch_id, jobs = store.submit_batch([req(f"b{i}") for i in range(250)], priority=1)
    assert len(jobs) == 250 and all(job.batch_id == batch_id for job in jobs)
    claimed = store.claim("w1", lease_s=60, limit=3)
    assert [job.id for job in claimed] == [job.id for job in jobs[:3]]
    store.cancel(jobs[3].id)
    counts = store.batch_counts(batch_id)
    assert counts == {"queued": 246, "running": 3, "succeeded": 0, "failed": 0, "canceled": 1}
    streamed = store.batch_jobs(batch_id)
    assert iter(streamed) is streamed
    assert [job.request.prompt for job in streamed] == [f"b{i}" for i in range(250)]
    added, _ = store.submit(req("late"), batch_id=batch_id)
    assert store.batch_counts(batch_id)["queued"] == 247 and added.batch_id == batch_id


def test_unknown_batch(store: JobStore):
    for call in (store.batch_counts, store.batch_jobs, lambda b: store.submit(req(), batch_id=b)):
        with pytest.raises(NotFound) as info:
            call("batch_nope")
        assert info.value.param == "batch_id"
    with pytest.raises(InvalidRequest):
        store.submit_batch([])
    assert store.count(JobStatus.queued) == 0


def test_last_heartbeat_is_the_latest_lease_renewal_of_a_running_job(store: JobStore):
    assert store.last_heartbeat() is None  # nothing running
    store.submit(req())
    before = datetime.now(timezone.utc)
    job = claim_one(store)
    assert before - timedelta(seconds=1) <= store.last_heartbeat() <= datetime.now(timezone.utc)
    assert store.last_heartbeat() == job.heartbeat_at
    reap_all(store)  # the lease ran out: back to the queue, nothing running
    assert store.last_heartbeat() is None

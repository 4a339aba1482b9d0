"""Input images live outside the queue row: get/list never load them, a claim does.

Both backends; the upgrade of a database whose queued jobs hold inline images is here too.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import command

from pixelmill.core.types import ControlSpec, GenerationRequest, JobStatus, Mode
from pixelmill.db import tables as t
from pixelmill.db.engine import alembic_config, create_db_engine, upgrade_schema, write_transaction
from pixelmill.jobs import leases
from pixelmill.jobs.inputs import input_image_id
from pixelmill.jobs.store import JobStore
from tests.support.images import gradient, png_bytes

INIT = png_bytes(gradient(96, 64))
MASK = png_bytes(gradient(96, 64).convert("L"))
CONTROL = png_bytes(gradient(64, 64).rotate(90))


def img2img(prompt: str = "a fox", **fields) -> GenerationRequest:
    # Sized, as the request policy leaves every img2img request (else it runs alone).
    body = {"prompt": prompt, "mode": Mode.img2img, "steps": 4, "width": 96, "height": 64, "init_image": INIT,
            **fields}
    return GenerationRequest(**body)


def full(**fields) -> GenerationRequest:
    """An inpaint request with every kind of input image."""
    control = ControlSpec(name="canny", image=CONTROL)
    return img2img(mode=Mode.inpaint, mask_image=MASK, controlnets=(control,), **fields)


def without_images(request: GenerationRequest) -> GenerationRequest:
    controls = tuple(c.model_copy(update={"image": b""}) for c in request.controlnets)
    return request.model_copy(update={"init_image": None, "mask_image": None, "controlnets": controls})


def statements(store: JobStore) -> list[str]:
    seen: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def count_images(store: JobStore) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t.input_images)).scalar_one()


def test_reads_never_load_input_images(store: JobStore):
    request = full()
    job, _ = store.submit(request, idempotency_key="k")
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(t.jobs.c.request).where(t.jobs.c.id == job.id)).scalar_one()
    assert len(stored) < 1000 and base64.b64encode(INIT).decode()[:40] not in stored
    seen = statements(store)
    reads = [store.get(job.id), store.list_jobs()[0][0], *store.batch_jobs(store.submit_batch([request])[0]),
             store.submit(request, idempotency_key="k")[0]]
    store.queue_position(job.id)
    assert all(record.request == without_images(request) for record in reads)
    assert not [sql for sql in seen if "input_images" in sql and sql.lstrip().upper().startswith("SELECT")]


def test_a_claim_loads_only_the_images_of_the_jobs_it_takes(store: JobStore, monkeypatch):
    requests = [img2img(init_image=png_bytes(gradient(64 + 8 * i, 64))) for i in range(4)]
    for request in requests:
        store.submit(request)
    loaded: list[set[str]] = []
    real = leases.load_images
    monkeypatch.setattr(leases, "load_images", lambda conn, ids: loaded.append(set(ids)) or real(conn, ids))
    claimed = store.claim("w1", lease_s=60, limit=2)
    assert [job.request for job in claimed] == requests[:2]
    assert loaded == [{input_image_id(r.init_image) for r in requests[:2]}]


def test_claimed_jobs_get_every_image_back(store: JobStore):
    request = full()
    store.submit(request)
    (job,) = store.claim("w1", lease_s=60, limit=4, batch_key=store.batch_key)
    assert job.request == request and job.request.controlnets[0].image == CONTROL


def test_an_image_used_by_many_jobs_is_stored_once(store: JobStore):
    store.submit_batch([img2img(f"p{i}") for i in range(5)])
    store.submit(img2img("one more"))
    assert count_images(store) == 1
    store.submit(full())
    assert count_images(store) == 3  # + mask and control image


def test_claims_batch_by_the_key_stored_at_submit(store: JobStore):
    same = [store.submit(img2img(f"p{i}"))[0] for i in range(3)]
    store.submit(img2img("other", steps=9))
    controls = [store.submit(full())[0] for _ in range(2)]  # a ControlNet job always runs alone
    claimed = store.claim("w1", lease_s=60, limit=8, batch_key=store.batch_key)
    assert [job.id for job in claimed] == [job.id for job in same]
    assert all(job.request.init_image == INIT for job in claimed)
    store.claim("w1", lease_s=60, limit=1)  # the steps=9 job
    alone = store.claim("w1", lease_s=60, limit=8, batch_key=store.batch_key)
    assert [job.id for job in alone] == [controls[0].id]


def test_a_job_whose_images_are_gone_fails_instead_of_blocking_the_queue(store: JobStore):
    broken, _ = store.submit(img2img("broken"))
    fine, _ = store.submit(GenerationRequest(prompt="fine", steps=4))
    with store.engine.begin() as conn:
        conn.execute(sa.delete(t.input_images))
    assert [job.id for job in store.claim("w1", lease_s=60, limit=2)] == [fine.id]
    failed = store.get(broken.id)
    assert failed.status is JobStatus.failed and failed.error.code == "input_missing"


# ---- databases from before input_images --------------------------------------------------


def _upgrade_to(engine: sa.Engine, revision: str) -> None:
    config = alembic_config()
    with write_transaction(engine) as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def _legacy_job(conn: sa.Connection, job_id: str, request: GenerationRequest, status: str, **fields) -> None:
    """A ``jobs`` row as revision 0003 stored it: the images inline, base64 in the JSON."""
    table = sa.Table("jobs", sa.MetaData(), autoload_with=conn)
    conn.execute(sa.insert(table), [{
        "id": job_id, "status": status, "priority": 0, "request": request.model_dump_json(),
        "request_hash": t.request_hash(request, None, 0, fields.get("api_key_id")), "attempt": 0,
        "max_attempts": 3, "cancel_requested": False, "progress_step": 0, "progress_total": 0,
        "created_at": datetime.now(timezone.utc), "result_ids": [], "result_seeds": [],
        "mode": request.mode.value, "width": request.width, "height": request.height, "steps": request.steps,
        "images": 0, **fields,
    }])


def test_upgrade_moves_inline_images_of_jobs_already_queued(fresh_db_url: str):
    engine = create_db_engine(fresh_db_url)
    try:
        _upgrade_to(engine, "0003")
        with engine.begin() as conn:
            _legacy_job(conn, "job_old1", full(), "queued", idempotency_key="order-1", api_key_id="key_a")
            _legacy_job(conn, "job_old2", img2img("second"), "queued")
            _legacy_job(conn, "job_done", img2img("done"), "succeeded")
        upgrade_schema(engine)
        store = JobStore(engine)
        with engine.connect() as conn:
            rows = {row.id: row for row in conn.execute(sa.select(t.jobs))}
        assert all(len(row.request) < 1000 for row in rows.values())
        assert rows["job_done"].batch_key is None and rows["job_old2"].batch_key is not None
        assert count_images(store) == 3
        assert store.get("job_old1").request == without_images(full())
        # The same body under the same key and API key is still the same job after the upgrade.
        assert store.submit(full(), idempotency_key="order-1", api_key_id="key_a")[0].id == "job_old1"
        assert store.submit(full(), idempotency_key="order-1", api_key_id="key_b")[1] is True
        new, _ = store.submit(img2img("new"))  # same key as job_old2: they batch together
        claimed = store.claim("w1", lease_s=60, limit=1)
        assert [job.request for job in claimed] == [full()]
        batch = store.claim("w1", lease_s=60, limit=4, batch_key=store.batch_key)
        assert [job.id for job in batch] == ["job_old2", new.id] and batch[0].request == img2img("second")
    finally:
        engine.dispose()


def test_downgrade_puts_the_images_back_inline(fresh_db_url: str):
    engine = create_db_engine(fresh_db_url)
    try:
        upgrade_schema(engine)
        job, _ = JobStore(engine).submit(full())
        config = alembic_config()
        with write_transaction(engine) as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0003")
        with engine.connect() as conn:
            stored = conn.execute(sa.select(t.jobs.c.request).where(t.jobs.c.id == job.id)).scalar_one()
        assert GenerationRequest.model_validate(json.loads(stored)) == full()
        upgrade_schema(engine)
        assert JobStore(engine).claim("w1", lease_s=60)[0].request == full()
    finally:
        engine.dispose()

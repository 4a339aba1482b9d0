"""Who served a job, as the job views show it: ``route`` (local or the backend's name) for
everyone who may see the job, the upstream's id for admin keys only, never the backend's
URL or credential; the ``route`` filter of ``GET /v1/jobs``."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.integration.test_gateway_routing import backends_toml, gateway, row, submit, upstream, wait
from tests.support.receiver import Receiver


def _get(url: str, path: str, token: str | None = None, **params) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{url}{path}", params=params, headers=headers, timeout=10)


def test_job_views_show_the_route_and_the_route_filter(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_VIEW_KEY", "sk-view-secret-value")
    receiver = Receiver()
    try:
        with upstream(tmp_path) as up:
            toml = backends_toml(tmp_path, up, kind="replicate", env="GATEWAY_VIEW_KEY")
            with gateway(tmp_path, toml, webhook_allow_private=True) as gw:
                hosted = submit(gw.url, "cloud-model", webhook=f"{receiver.url}/hook")
                local = submit(gw.url, None)
                assert hosted["route"] == "hosted" and local["route"] == "local"  # the 202 body already says
                done, local_done = wait(gw.url, hosted["id"]), wait(gw.url, local["id"])
                assert done["status"] == local_done["status"] == "succeeded", (done, local_done)
                upstream_id = row(gw, hosted["id"])["upstream_id"]
                assert upstream_id
                # Open mode (no keys, loopback) is an admin: the upstream id is shown.
                assert done["route"] == "hosted" and done["upstream_id"] == upstream_id
                assert local_done["route"] == "local" and local_done["upstream_id"] is None

                listed = _get(gw.url, "/v1/jobs", route="hosted").json()["data"]
                assert [job["id"] for job in listed] == [hosted["id"]]
                assert listed[0]["upstream_id"] == upstream_id
                only_local = _get(gw.url, "/v1/jobs", route="local").json()["data"]
                assert [job["id"] for job in only_local] == [local["id"]]
                assert _get(gw.url, "/v1/jobs", route="nowhere").json()["data"] == []
                both = _get(gw.url, "/v1/jobs", route="hosted", status="succeeded").json()["data"]
                assert [job["id"] for job in both] == [hosted["id"]]
                bad = _get(gw.url, "/v1/jobs", route="http://x/")
                assert bad.status_code in (400, 422) and "route" in bad.text

                # The backend's URL (its port) and credential are in no view.
                texts = [_get(gw.url, f"/v1/jobs/{hosted['id']}").text, _get(gw.url, "/v1/jobs").text]
                for text in texts:
                    assert "sk-view-secret-value" not in text and f"127.0.0.1:{up.port}" not in text
                    assert "/replicate/v1" not in text

                # With API keys: a generate key sees its job's route, not the upstream's id.
                from pixelmill.auth.store import KeyStore

                keys = KeyStore(gw.services.store.engine)
                _, admin = keys.create("ops", scope="admin")
                _, member = keys.create("member", scope="generate")
                body = {"prompt": "mine", "model": "cloud-model", "width": 64, "height": 64, "steps": 2}
                mine = httpx.post(f"{gw.url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {member}"},
                                  timeout=30)
                assert mine.status_code == 202, mine.text
                assert mine.json()["route"] == "hosted" and mine.json()["upstream_id"] is None
                job_id = mine.json()["id"]
                deadline = time.monotonic() + 20
                while (seen := _get(gw.url, f"/v1/jobs/{job_id}", member).json())["status"] != "succeeded":
                    assert time.monotonic() < deadline and seen["status"] in ("queued", "running"), seen
                    time.sleep(0.05)
                assert seen["route"] == "hosted" and seen["upstream_id"] is None
                member_list = _get(gw.url, "/v1/jobs", member, route="hosted").json()["data"]
                assert [job["id"] for job in member_list] == [job_id]
                assert member_list[0]["upstream_id"] is None
                theirs = row(gw, job_id)["upstream_id"]
                assert theirs and _get(gw.url, f"/v1/jobs/{job_id}", admin).json()["upstream_id"] == theirs
                admin_list = _get(gw.url, "/v1/jobs", admin, route="hosted").json()["data"]
                assert {job["id"]: job["upstream_id"] for job in admin_list} == {
                    job_id: theirs, hosted["id"]: upstream_id}
        # The webhook goes to whoever submitted: route yes, upstream id no.
        body = json.loads(receiver.requests[-1]["body"])
        assert body["id"] == hosted["id"] and body["route"] == "hosted" and body["upstream_id"] is None
    finally:
        receiver.close()


@pytest.fixture
def store(tmp_path):
    from pixelmill.jobs.store import JobStore

    return JobStore.open(str(tmp_path / "jobs.db"))


def test_route_filter_pages_without_sorting_the_table(store):
    """The filter pages by cursor like the others, and SQLite walks a listing index in
    order (no temporary B-tree: no sort over every matching row)."""
    import sqlalchemy as sa

    from pixelmill.core.types import GenerationRequest

    ids = {"hosted": [], "local": []}
    for i in range(7):
        route = "hosted" if i % 2 else "local"
        job, _ = store.submit(GenerationRequest(prompt=f"p{i}", width=64, height=64, steps=1), route=route)
        ids[route].append(job.id)
    seen, cursor = [], None
    while True:
        page, cursor = store.list_jobs(route="hosted", limit=2, cursor=cursor)
        assert all(job.route == "hosted" for job in page)
        seen += [job.id for job in page]
        if cursor is None:
            break
    assert seen == ids["hosted"][::-1]  # newest first, every one once
    assert [job.id for job in store.list_jobs(route="local", limit=100)[0]] == ids["local"][::-1]

    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "jobs.route" in statement:
            statements.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        store.list_jobs(route="hosted", limit=10)
        store.list_jobs(route="hosted", status="succeeded", limit=10)
        store.list_jobs(route="hosted", api_key_id="k", limit=10)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    assert len(statements) == 3
    with store.engine.connect() as conn:
        for statement, parameters in statements:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = " | ".join(str(r[-1]) for r in rows)
            assert "TEMP B-TREE" not in plan and "ix_jobs_" in plan and "listing" in plan, plan

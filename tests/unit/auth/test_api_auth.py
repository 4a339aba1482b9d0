"""Authentication, scopes, visibility and limits through the real app, in-process."""

from __future__ import annotations

import pytest

from tests.unit.auth.conftest import JOB


def test_open_mode_on_loopback_without_keys(make_app):
    app = make_app()
    assert app.call("POST", "/v1/jobs", json=JOB).status_code == 202
    # OpenAI clients always send some key; in open mode any is fine.
    assert app.call("GET", "/v1/jobs", key="unused").status_code == 200


def test_no_keys_on_a_network_address_is_closed(make_app):
    app = make_app(host="0.0.0.0")
    response = app.call("GET", "/v1/jobs")
    assert response.status_code == 401 and "pixelmill keys create" in response.json()["error"]["message"]
    assert make_app(host="0.0.0.0", insecure_no_auth=True).call("GET", "/v1/jobs").status_code == 200


def test_keys_enforced_on_loopback_too(make_app):
    app = make_app()
    key = app.new_key("team-a")
    for sent in (None, "unused", key[:-2] + "xx"):
        response = app.call("GET", "/v1/jobs", key=sent)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["type"] == "authentication_error"
    assert app.call("GET", "/v1/jobs", key=key).status_code == 200
    assert app.call("GET", "/v1/jobs", headers={"Authorization": f"Basic {key}"}).status_code == 401
    assert app.call("GET", "/health").status_code == 200  # open, not 401
    assert app.call("GET", "/openapi.json").status_code == 200


def test_revoked_key_is_refused_at_once(make_app):
    app = make_app()
    key = app.new_key("team-a")
    app.new_key("other")
    assert app.call("GET", "/v1/models", key=key).status_code == 200
    app.keys.revoke("team-a")
    assert app.call("GET", "/v1/models", key=key).status_code == 401


def test_jobs_are_visible_to_their_key_and_admins_only(make_app):
    app = make_app()
    a, b, admin = app.new_key("a"), app.new_key("b"), app.new_key("root", scope="admin")
    job = app.call("POST", "/v1/jobs", key=a, json=JOB).json()
    batch = app.call("POST", "/v1/batches", key=a, json={"request": JOB, "seeds": {"count": 2}}).json()
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events", f"/v1/batches/{batch['id']}",
                 f"/v1/batches/{batch['id']}/archive"):
        assert app.call("GET", path, key=b).status_code == 404, path
    assert app.call("POST", f"/v1/jobs/{job['id']}/cancel", key=b).status_code == 404
    assert app.call("GET", f"/v1/jobs/{job['id']}", key=a).json()["status"] == "queued"
    assert app.call("GET", f"/v1/batches/{batch['id']}", key=admin).status_code == 200
    assert app.call("GET", "/v1/jobs", key=b).json()["data"] == []
    assert len(app.call("GET", "/v1/jobs", key=a).json()["data"]) == 3
    assert len(app.call("GET", "/v1/jobs", key=admin).json()["data"]) == 3


def test_the_ledger_records_the_key_of_every_job(make_app):
    app = make_app()
    key = app.new_key("team-a")
    key_id = app.keys.lookup(key).id
    app.call("POST", "/v1/jobs", key=key, json=JOB)
    app.call("POST", "/v1/batches", key=key, json={"request": JOB, "seeds": {"count": 2}})
    store = app.app.state.services.store
    jobs, _ = store.list_jobs(limit=10)
    assert len(jobs) == 3 and {job.api_key_id for job in jobs} == {key_id}


def test_rate_limit_is_429_with_retry_after(make_app):
    app = make_app()
    key = app.new_key("team-a", rate="2/min")
    assert [app.call("POST", "/v1/jobs", key=key, json=JOB).status_code for _ in range(2)] == [202, 202]
    refused = app.call("POST", "/v1/jobs", key=key, json=JOB)
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 30
    assert app.call("GET", "/v1/jobs", key=key).status_code == 200  # reads are not rate limited
    assert app.call("POST", "/v1/jobs", key=app.new_key("other", rate="2/min"), json=JOB).status_code == 202


def test_concurrent_job_limit_counts_queued_and_running(make_app):
    app = make_app()
    key = app.new_key("team-a", max_running=2)
    assert [app.call("POST", "/v1/jobs", key=key, json=JOB).status_code for _ in range(2)] == [202, 202]
    refused = app.call("POST", "/v1/jobs", key=key, json=JOB)
    assert refused.status_code == 429 and "retry-after" in refused.headers
    batch = {"request": JOB, "seeds": {"count": 1}}
    assert app.call("POST", "/v1/batches", key=key, json=batch).status_code == 429
    job_id = app.call("GET", "/v1/jobs", key=key).json()["data"][0]["id"]
    app.call("POST", f"/v1/jobs/{job_id}/cancel", key=key)
    assert app.call("POST", "/v1/jobs", key=key, json=JOB).status_code == 202


def test_admin_routes_need_the_admin_scope(make_app):
    app = make_app()
    user, admin = app.new_key("user"), app.new_key("root", scope="admin")
    assert app.call("GET", "/v1/keys", key=user).status_code == 403
    created = app.call("POST", "/v1/keys", key=admin, json={"name": "ci", "rate": "5/s", "max_running": 2})
    assert created.status_code == 201
    token = created.json()["key"]
    listed = app.call("GET", "/v1/keys", key=admin).text
    assert token not in listed and created.json()["prefix"] in listed
    assert app.call("GET", "/v1/jobs", key=token).status_code == 200
    assert app.call("DELETE", f"/v1/keys/{created.json()['id']}", key=admin).json()["revoked_at"]
    assert app.call("GET", "/v1/jobs", key=token).status_code == 401
    bad = app.call("POST", "/v1/keys", key=admin, json={"name": "x", "rate": "lots"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rate"


@pytest.mark.parametrize("origins", [[], ["https://app.example.com"]])
def test_cors_is_off_by_default_and_limited_to_configured_origins(make_app, origins):
    app = make_app(cors_origins=origins)
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    response = app.call("OPTIONS", "/v1/jobs", headers=preflight)
    allowed = response.headers.get("access-control-allow-origin")
    assert allowed == ("https://app.example.com" if origins else None)
    evil = app.call("GET", "/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers

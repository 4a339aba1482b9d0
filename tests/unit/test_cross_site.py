"""Issue 19 point 4: browser pages of other sites cannot change anything, nor use admin routes.

Programs (curl, SDKs: no ``Origin``, no ``Sec-Fetch-Site``) are never refused.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.datastructures import Headers

from pixelmill.api.origin import cross_site_reason, rebinding_reason
from pixelmill.server import build_app
from pixelmill.settings import Settings

BASE = "http://127.0.0.1:8000"
EVIL = "https://evil.example"
APP = "https://app.example"
JOB = {"prompt": "x", "width": 64, "height": 64}


@pytest.fixture()
def make_app(tmp_path):
    def make(**settings):
        base = {"models_dir": tmp_path / "models", "data_dir": tmp_path / "data", "workers": 0}
        return build_app(Settings(**(base | settings)))

    return make


def call(app, method: str, path: str, headers: dict | None = None, key: str | None = None, **kwargs) -> httpx.Response:
    headers = (headers or {}) | ({"Authorization": f"Bearer {key}"} if key else {})

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(go())


@pytest.mark.parametrize(("headers", "reason"), [
    ({"Origin": EVIL}, "Origin 'https://evil.example' is not this server's origin"),
    ({"Origin": "null"}, "Origin 'null'"),
    ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
    ({"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site: same-site"),
    ({"Origin": BASE, "Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
])
def test_cross_site_writes_are_refused_naming_why(make_app, headers, reason):
    response = call(make_app(), "POST", "/v1/jobs", headers=headers, json=JOB)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "forbidden" and "cross-site request refused" in error["message"]
    assert reason in error["message"]


def test_a_page_of_another_site_cannot_replace_a_lora(make_app, tmp_path):
    files = {"file": ("style.safetensors", b"\0" * 64, "application/octet-stream")}
    response = call(make_app(), "POST", "/v1/loras", headers={"Origin": EVIL}, files=files,
                    data={"name": "style", "overwrite": "true"})
    assert response.status_code == 403
    assert not list((tmp_path / "models").rglob("*.safetensors"))
    refresh = call(make_app(), "POST", "/v1/models/refresh", headers={"Sec-Fetch-Site": "cross-site"})
    assert refresh.status_code == 403


@pytest.mark.parametrize("headers", [
    {},  # curl, the SDKs
    {"Origin": BASE, "Sec-Fetch-Site": "same-origin"},
    {"Origin": BASE},  # a browser without fetch metadata
    {"Sec-Fetch-Site": "none"},  # typed by the user
    {"Origin": "http://localhost:8000", "Host": "localhost:8000"},
])
def test_programs_and_same_origin_pages_may_write(make_app, headers):
    assert call(make_app(), "POST", "/v1/jobs", headers=headers, json=JOB).status_code == 202


def test_origins_allowed_by_cors_may_write_but_not_use_admin_routes_in_open_mode(make_app):
    app = make_app(cors_origins=[APP])
    browser = {"Origin": APP, "Sec-Fetch-Site": "cross-site"}
    assert call(app, "POST", "/v1/jobs", headers=browser, json=JOB).status_code == 202
    for method, path in [("GET", "/v1/keys"), ("GET", "/v1/cost/summary"), ("POST", "/v1/models/refresh")]:
        response = call(app, method, path, headers=browser)
        assert response.status_code == 403, (path, response.text)
        assert "admin routes" in response.json()["error"]["message"]


def test_admin_routes_refuse_any_cross_site_browser_request_in_open_mode(make_app):
    app = make_app()
    # A cross-site GET (an <img> or no-cors fetch) changes nothing elsewhere, but not here.
    assert call(app, "GET", "/v1/keys", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert call(app, "GET", "/v1/keys").status_code == 200
    assert call(app, "GET", "/v1/keys", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert call(app, "GET", "/v1/jobs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_with_keys_an_allowed_origin_may_use_admin_routes(make_app):
    app = make_app(cors_origins=[APP])
    admin = app.state.auth.keys.create("root", scope="admin")[1]
    browser = {"Origin": APP, "Sec-Fetch-Site": "cross-site"}
    assert call(app, "GET", "/v1/keys", headers=browser, key=admin).status_code == 200
    assert call(app, "POST", "/v1/jobs", headers={"Origin": EVIL}, key=admin, json=JOB).status_code == 403


def test_a_loopback_server_refuses_browsers_under_a_foreign_host_name(make_app):
    # DNS rebinding: evil.example resolves to 127.0.0.1, so its page is "same-origin".
    rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000", "Sec-Fetch-Site": "same-origin"}
    response = call(make_app(), "POST", "/v1/jobs", headers=rebound, json=JOB)
    assert response.status_code == 403 and "DNS rebinding" in response.json()["error"]["message"]
    assert call(make_app(), "GET", "/v1/jobs", headers=rebound).status_code == 403
    assert call(make_app(), "POST", "/v1/jobs", headers={"Host": "evil.example:8000"}, json=JOB).status_code == 202
    named = make_app(public_url="http://box.lan:8000")
    lan = {"Host": "box.lan:8000", "Origin": "http://box.lan:8000", "Sec-Fetch-Site": "same-origin"}
    assert call(named, "POST", "/v1/jobs", headers=lan, json=JOB).status_code == 202
    network = make_app(host="0.0.0.0", insecure_no_auth=True)
    assert call(network, "POST", "/v1/jobs", headers=lan, json=JOB).status_code == 202


@pytest.mark.parametrize(("origin", "host", "same"), [
    ("http://localhost", "localhost:80", True),
    ("https://box.lan", "box.lan", True),
    ("https://box.lan", "box.lan:8443", False),
    ("http://[::1]:8000", "[::1]:8000", True),
    ("http://127.0.0.1:8001", "127.0.0.1:8000", False),
    ("HTTP://LOCALHOST:8000", "localhost:8000", True),
    ("ftp://localhost:8000", "localhost:8000", False),
])
def test_same_origin_compares_host_and_port(origin, host, same):
    reason = cross_site_reason(Headers({"origin": origin, "host": host}))
    assert (reason is None) is same


def test_rebinding_accepts_loopback_names_only():
    for host in ("localhost:8000", "127.0.0.1:8000", "127.1.2.3", "[::1]:8000", "app.localhost:8000"):
        assert rebinding_reason(Headers({"host": host})) is None, host
    for host in ("evil.example:8000", "10.0.0.5:8000", ""):
        assert rebinding_reason(Headers({"host": host})), host

"""API keys against a real server: every route closed without a key, the openai SDK with one.

The session ``server`` fixture runs in open mode (no keys, loopback); these tests start
their own server after creating keys with ``pixelmill keys create``, as an operator would.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.keys import create_key, pixelmill

OPEN_ROUTES = {"/health", "/v1/files/{file_id}", "/dashboard"}
"""Routes that answer without a key (the docs pages too); everything else needs one."""


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x" * 32, path)


def test_every_route_but_the_open_ones_needs_a_key(keyed):
    server, _ = keyed
    schema = httpx.get(f"{server.url}/openapi.json").json()  # the docs stay open
    checked = 0
    for path, operations in schema["paths"].items():
        for method in operations:
            response = httpx.request(method.upper(), f"{server.url}{_concrete(path)}", timeout=30)
            if path in OPEN_ROUTES:
                assert response.status_code != 401, (method, path)
                continue
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
            assert response.json()["error"]["code"] == "unauthorized"
            checked += 1
    assert checked >= 15 and httpx.get(f"{server.url}/docs").status_code == 200


def test_openai_sdk_with_a_valid_key_generates(keyed):
    server, keys = keyed
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["user"], max_retries=0, timeout=120)
    result = client.images.generate(model="demo", prompt="a fox", size="64x64", extra_body={"seed": 1})
    assert len(result.data) == 1 and result.data[0].b64_json
    auth = {"Authorization": f"Bearer {keys['user']}"}
    jobs = httpx.get(f"{server.url}/v1/jobs", headers=auth).json()["data"]
    assert len(jobs) == 1  # the synchronous call is a job of this key


def test_openai_sdk_with_a_wrong_key_raises_authentication_error(keyed):
    server, keys = keyed
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="pm_" + "x" * 43, max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        client.images.generate(model="demo", prompt="a fox", size="64x64")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_user_key_cannot_manage_keys_or_see_admin_jobs(keyed):
    server, keys = keyed
    user, admin = ({"Authorization": f"Bearer {keys[k]}"} for k in ("user", "admin"))
    assert httpx.get(f"{server.url}/v1/keys", headers=user).status_code == 403
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 1}
    job = httpx.post(f"{server.url}/v1/jobs", json=body, headers=admin).json()
    assert httpx.get(f"{server.url}/v1/jobs/{job['id']}", headers=user).status_code == 404
    assert httpx.get(f"{server.url}/v1/jobs/{job['id']}", headers=admin).status_code == 200


def test_serve_refuses_a_network_address_without_keys(tmp_path: Path):
    # Refused before binding: nothing ever listens on 0.0.0.0 here.
    done = pixelmill("serve", "--host", "0.0.0.0", "--workers", "0", "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2
    assert "pixelmill keys create" in done.stderr and "--insecure-no-auth" in done.stderr


def test_keys_cli_lists_without_secrets_and_revokes(tmp_path: Path):
    data = tmp_path / "data"
    token = create_key(data, "ci", "--rate", "60/min", "--max-running", "4")
    listing = pixelmill("keys", "list", "--data-dir", str(data))
    assert listing.returncode == 0 and "ci" in listing.stdout and token not in listing.stdout
    assert pixelmill("keys", "revoke", "ci", "--data-dir", str(data)).returncode == 0
    assert "ci" not in pixelmill("keys", "list", "--data-dir", str(data)).stdout
    assert pixelmill("keys", "revoke", "ci", "--data-dir", str(data)).returncode == 2

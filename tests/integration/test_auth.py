"""API keys against a real server: every route closed without a key, the openai SDK with one.

The session ``server`` fixture runs in open mode (no keys, loopback); these tests start
their own server after creating keys with ``pixelmill keys create``, as an operator would.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.keys import create_key, pixelmill

OPEN_ROUTES = {"/health", "/v1/files/{file_id}", "/dashboard",
               "/cog/health-check", "/cog/", "/cog/openapi.json"}  # Cog's probe, links and schema, like ours
"""Routes that answer without a key (the docs pages too); everything else needs one."""


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x" * 32, path)


def _a1111_401(body: dict) -> bool:
    return body["error"] == "Unauthorized" and body["errors"].startswith("401: ") and bool(body["detail"])


def _problem_401(body: dict) -> bool:  # RFC 7807
    return (body["status"] == 401 and body["title"] == "Unauthenticated"
            and body["type"].endswith(":unauthorized"))


def _cog_401(body: dict) -> bool:  # FastAPI's {"detail": ...}, as Cog's server writes it
    return isinstance(body["detail"], str) and bool(body["detail"]) and "error" not in body


def _openai_401(body: dict) -> bool:
    return body["error"]["code"] == "unauthorized"


def _expected_401(path: str) -> tuple[str, str, str, Callable[[dict], bool]]:
    """The dialect, challenge, media type and body test of a 401 for ``path``, written out here
    rather than taken from ``api.errors`` (docs/a1111.md, docs/replicate.md)."""
    if path.startswith(("/sdapi/", "/internal/", "/controlnet/")):  # A1111 clients send --api-auth
        return "a1111", "Basic", "application/json", _a1111_401
    if path.startswith("/replicate/"):
        return "replicate", "Bearer", "application/problem+json", _problem_401
    if path.startswith("/cog/"):
        return "cog", "Bearer", "application/json", _cog_401
    return "openai", "Bearer", "application/json", _openai_401


def _documented_error(schema: dict, operation: dict) -> tuple[str, dict]:
    """The media type and schema ``/openapi.json`` gives the operation's 4XX responses."""
    ((media_type, content),) = operation["responses"]["4XX"]["content"].items()
    name = content["schema"]["$ref"].rsplit("/", 1)[-1]
    return media_type, schema["components"]["schemas"][name]


def test_every_route_but_the_open_ones_needs_a_key(keyed):
    server, _ = keyed
    schema = httpx.get(f"{server.url}/openapi.json").json()  # the docs stay open
    checked: Counter[str] = Counter()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            response = httpx.request(method.upper(), f"{server.url}{_concrete(path)}", timeout=30)
            if path in OPEN_ROUTES:
                assert response.status_code != 401, (method, path)
                continue
            where = (method, path)
            assert response.status_code == 401, (*where, response.status_code)
            dialect, challenge, media_type, well_formed = _expected_401(path)
            assert response.headers["www-authenticate"].startswith(challenge), where
            assert response.headers["content-type"].split(";")[0] == media_type, where
            body = response.json()
            assert well_formed(body), (*where, body)
            # The dialect's body is also the one the document promises for this route.
            documented_type, documented = _documented_error(schema, operation)
            assert documented_type == media_type and set(documented["required"]) <= set(body), (*where, body)
            checked[dialect] += 1
    assert sum(checked.values()) >= 15 and httpx.get(f"{server.url}/docs").status_code == 200
    assert set(checked) == {"openai", "a1111", "replicate", "cog"}, checked  # every dialect was in the docs


def test_openai_sdk_with_a_valid_key_generates(keyed):
    server, keys = keyed
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["user"], max_retries=0, timeout=120)
    auth = {"Authorization": f"Bearer {keys['user']}"}
    # The keyed server is shared by the session: other tests' jobs of this key may exist.
    before = {job["id"] for job in httpx.get(f"{server.url}/v1/jobs", headers=auth).json()["data"]}
    result = client.images.generate(model="demo", prompt="a fox", size="64x64", extra_body={"seed": 1})
    assert len(result.data) == 1 and result.data[0].b64_json
    jobs = [job for job in httpx.get(f"{server.url}/v1/jobs", headers=auth).json()["data"] if job["id"] not in before]
    assert len(jobs) == 1 and jobs[0]["status"] == "succeeded"  # the synchronous call is a job of this key


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

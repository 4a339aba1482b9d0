"""Issue 19 §7/§8 over HTTP: client mistakes an attacker on loopback made are 4xx, never 500.

Every case runs on SQLite and on PostgreSQL (which refuses NUL bytes in text: the
original 500s came from there), through the ASGI app with no worker; one case runs
against a real ``pixelmill serve`` process, where uvicorn decodes the path itself. Each
refusal must name the parameter and change nothing: no job, key or file appears.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.postgres import pg_url  # noqa: F401  (fixture)
from tests.support.server import ServerProcess

NUL = "%00"
JOB = {"prompt": "a cat", "width": 64, "height": 64, "steps": 1}


@dataclass
class Api:
    """The in-process app and a way to call it (no lifespan: no worker, nothing generates)."""

    app: object

    def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        async def go():
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(go())

    def job_count(self) -> int:
        return len(self.app.state.services.store.list_jobs(limit=200)[0])


def _models(root: Path) -> Path:
    """A models dir with a fake base checkpoint, a fake refiner and broken LoRA files."""
    base = root / "checkpoints" / "base"
    base.mkdir(parents=True)
    te2 = ["transformers", "CLIPTextModelWithProjection"]
    (base / "model_index.json").write_text(json.dumps({"text_encoder": ["transformers", "CLIPTextModel"],
                                                       "text_encoder_2": te2}))
    (base / "unet.safetensors").write_bytes(b"w")
    refiner = root / "checkpoints" / "base-refiner"
    refiner.mkdir()
    refiner_index = {"text_encoder": [None, None], "text_encoder_2": te2}
    (refiner / "model_index.json").write_text(json.dumps(refiner_index))
    (refiner / "unet.safetensors").write_bytes(b"w")
    loras = root / "loras"
    loras.mkdir()
    (loras / "garbage.safetensors").write_bytes(b"not safetensors at all")
    (loras / "deep.safetensors").write_bytes(_nested_header())
    return root


def _nested_header(depth: int = 100_000) -> bytes:
    """A "safetensors" file whose JSON header is ``[[[[…]]]]``: RecursionError in json."""
    raw = b"[" * depth + b"]" * depth
    return struct.pack("<Q", len(raw)) + raw


@pytest.fixture(params=["sqlite", "postgres"])
def api(request, tmp_path) -> Api:
    db = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    settings = Settings(models_dir=_models(tmp_path / "models"), data_dir=tmp_path / "data", workers=0,
                        model="base", db=db)
    return Api(build_app(settings))


def _error(response: httpx.Response, status: int, param: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error["message"]


# --- ids and cursors ----------------------------------------------------------------------

ID_ROUTES = [
    ("GET", "/v1/jobs/{}", "job_id"),
    ("POST", "/v1/jobs/{}/cancel", "job_id"),
    ("GET", "/v1/jobs/{}/events", "job_id"),
    ("GET", "/v1/batches/{}", "batch_id"),
    ("GET", "/v1/batches/{}/archive", "batch_id"),
    ("GET", "/v1/files/{}", "file_id"),
]
BAD_IDS = [NUL, f"job_{NUL}", f"job_{'a' * 21}{NUL}", f"batch_{'a' * 21}{NUL}", f"{'A' * 31}{NUL}",
           "x" * 5000, "job_%E2%82%AC", "%27%20OR%201%3D1--"]


@pytest.mark.parametrize(("method", "route", "param"), ID_ROUTES)
def test_a_malformed_id_is_404_naming_it_and_changes_nothing(api, method, route, param):
    queued = api.call("POST", "/v1/jobs", json=JOB).json()
    for bad in BAD_IDS:
        message = _error(api.call(method, route.format(bad)), 404, param)
        assert "\x00" not in message  # shown escaped
    assert api.job_count() == 1
    assert api.call("GET", f"/v1/jobs/{queued['id']}").json()["status"] == "queued"  # not canceled


def test_well_formed_ids_still_work(api):
    job = api.call("POST", "/v1/jobs", json=JOB).json()
    assert api.call("GET", f"/v1/jobs/{job['id']}").status_code == 200
    batch = api.call("POST", "/v1/batches", json={"requests": [JOB, JOB]}).json()
    assert api.call("GET", f"/v1/batches/{batch['id']}").json()["size"] == 2
    assert api.call("POST", f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    _error(api.call("GET", "/v1/jobs/job_" + "a" * 22), 404, "job_id")  # well-formed, unknown


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = [
    "", NUL, "not-a-cursor!", "YQ", "a" * 129,
    _cursor("2026-01-01T00:00:00+00:00|job_\x00".encode()),  # decodes, but to a NUL id
    _cursor(b"0001-01-01T00:00:00+05:00|job_" + b"a" * 22),  # before year 1 in UTC
    _cursor(b"2026-01-01T00:00:00+00:00|' OR 1=1 --"),
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_malformed_cursor_is_400_naming_it(api, cursor):
    _error(api.call("GET", "/v1/jobs", params={"cursor": cursor}), 400, "cursor")


def test_cursors_the_server_made_still_page(api):
    ids = [api.call("POST", "/v1/jobs", json=JOB).json()["id"] for _ in range(3)]
    first = api.call("GET", "/v1/jobs", params={"limit": 2}).json()
    second = api.call("GET", "/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in first["data"] + second["data"]] == ids[::-1]


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "yesterday"])
def test_a_since_with_no_utc_equivalent_is_400(api, since):
    _error(api.call("GET", "/v1/jobs", params={"since": since}), 400, "since")


# --- keys -----------------------------------------------------------------------------------


def test_the_first_key_over_http_needs_confirmation(api):
    message = _error(api.call("POST", "/v1/keys", json={"name": "mallory", "scope": "admin"}), 400,
                     "confirm_enable_keys")
    assert "turns authentication on" in message and "pixelmill keys create" in message
    assert api.call("GET", "/v1/jobs").status_code == 200  # still open: nothing was created
    confirmed = {"name": "root", "scope": "admin", "confirm_enable_keys": True}
    created = api.call("POST", "/v1/keys", json=confirmed)
    assert created.status_code == 201, created.text
    admin = {"Authorization": f"Bearer {created.json()['key']}"}
    assert api.call("GET", "/v1/jobs").status_code == 401  # auth is on now
    second = api.call("POST", "/v1/keys", json={"name": "team-a"}, headers=admin)  # no confirmation needed
    assert second.status_code == 201, second.text


def test_a_duplicate_key_name_is_409_naming_it(api):
    body = {"name": "root", "scope": "admin", "confirm_enable_keys": True}
    admin = {"Authorization": f"Bearer {api.call('POST', '/v1/keys', json=body).json()['key']}"}
    for name in ("root", " root "):
        _error(api.call("POST", "/v1/keys", json={"name": name}, headers=admin), 409, "name")
    assert [k["name"] for k in api.call("GET", "/v1/keys", headers=admin).json()["data"]] == ["root"]


@pytest.mark.parametrize("ref", [NUL, f"key_{NUL}", "%01name", "x" * 101])
def test_revoking_a_malformed_key_reference_is_404(api, ref):
    _error(api.call("DELETE", f"/v1/keys/{ref}"), 404, "key_id")


# --- LoRAs and models --------------------------------------------------------------------------


def test_broken_lora_files_are_listed_invalid_not_a_500(api):
    listed = api.call("GET", "/v1/loras")
    assert listed.status_code == 200, listed.text
    entries = {e["name"]: e for e in listed.json()["data"]}
    assert set(entries) == {"deep", "garbage"}
    assert not entries["deep"]["valid"] and "nested too deeply" in entries["deep"]["error"]
    assert not entries["garbage"]["valid"] and entries["garbage"]["error"]


@pytest.mark.parametrize("name", ["garbage", "deep"])
def test_a_request_naming_a_broken_lora_is_400_and_queues_nothing(api, name):
    body = JOB | {"loras": [{"name": name, "weight": 0.5}]}
    message = _error(api.call("POST", "/v1/jobs", json=body), 400, "loras[0].name")
    assert name in message and "safetensors" in message
    assert api.job_count() == 0


def test_an_upload_with_a_deeply_nested_header_is_400_naming_file(api):
    files = {"file": ("deep.safetensors", _nested_header(), "application/octet-stream")}
    response = api.call("POST", "/v1/loras", data={"name": "uploaded", "base": "base"}, files=files)
    assert "nested too deeply" in _error(response, 400, "file")
    assert not (api.app.state.services.registry.root / "loras" / "uploaded.safetensors").exists()


def test_a_refiner_as_model_is_400_and_queues_nothing(api):
    message = _error(api.call("POST", "/v1/jobs", json=JOB | {"model": "base-refiner"}), 400, "model")
    assert "refiner" in message and api.job_count() == 0


# --- a real server process ------------------------------------------------------------------------


def test_a_real_server_on_postgres_answers_nul_ids_with_404(pg_url, tmp_path):  # noqa: F811
    proc = ServerProcess(tmp_path, "--models-dir", str(_models(tmp_path / "models")), "--model", "base",
                         "--workers", "0", "--db", pg_url)
    proc.start()
    try:
        for method, route, param in ID_ROUTES:
            response = httpx.request(method, proc.url + route.format(f"job_{NUL}"), timeout=10)
            _error(response, 404, param)
        _error(httpx.get(f"{proc.url}/v1/jobs?cursor={NUL}", timeout=10), 400, "cursor")
        _error(httpx.delete(f"{proc.url}/v1/keys/{NUL}", timeout=10), 404, "key_id")
        assert "Traceback" not in proc.log()
    finally:
        proc.stop()

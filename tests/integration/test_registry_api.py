"""The models directory over real HTTP: listings, refresh, LoRA upload and its refusals.

Read-only checks use the session ``server``; admin scope is checked on ``keyed``. Uploads
write into the models directory, so they run against their own server (API only, no
worker) with its own copy of the demo models, plus traps: pickle files whose access
time would show a read, and symlinks leading out of their folders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from safetensors.numpy import load, save

from tests.support.server import ServerProcess

UPLOAD_LIMIT = 400_000
OLD_ATIME = 1_000_000_000
TRAVERSALS = ["../demo", "../../etc/passwd", "/etc/passwd", "%2e%2e%2fdemo", "..%2F..%2Fdemo", "..\\demo",
              "checkpoints\\..\\demo", "demo/../demo", "./demo", "demo/"]


@pytest.fixture(scope="module")
def models(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo models with pickle files and escaping symlinks planted in it."""
    root = tmp_path_factory.mktemp("registry-api") / "models"
    shutil.copytree(demo_models, root)
    for folder in ("checkpoints", "loras"):
        trap = root / folder / "evil.ckpt"
        trap.write_bytes(b"\x80\x04\x95pickle that must never be read")
        os.utime(trap, (OLD_ATIME, OLD_ATIME + 10))  # atime < mtime: any read updates it (relatime)
    os.symlink(demo_models / "checkpoints" / "demo", root / "checkpoints" / "escape")
    os.symlink(demo_models / "loras" / "demo-style.safetensors", root / "loras" / "escape.safetensors")
    return root


@pytest.fixture(scope="module")
def own(models: Path, tmp_path_factory: pytest.TempPathFactory):
    """An API-only server (no worker: nothing here generates) over ``models``."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("registry-server"), "--models-dir", str(models), "--model", "demo",
        "--workers", "0", "--max-multipart-bytes", str(UPLOAD_LIMIT),
    )
    proc.start()
    yield proc
    proc.stop()


def _lora_bytes(models: Path, edit=lambda t: t) -> bytes:
    return save(edit(load((models / "loras" / "demo-style.safetensors").read_bytes())))


def _upload(server, data: bytes, filename: str = "lora.safetensors", **fields: str) -> httpx.Response:
    files = {"file": (filename, data, "application/octet-stream")}
    return httpx.post(f"{server.url}/v1/loras", data=fields, files=files, timeout=60)


def _error(response: httpx.Response, status: int, param: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error["message"]


def _lora_names(server) -> list[str]:
    return [entry["name"] for entry in httpx.get(f"{server.url}/v1/loras").json()["data"]]


# --- listings (session server) ------------------------------------------------------------


def test_loras_are_listed_with_format_rank_and_compatibility(server):
    body = httpx.get(f"{server.url}/v1/loras").json()
    assert body["object"] == "list"
    demo = next(entry for entry in body["data"] if entry["id"] == "demo-style")
    assert demo["kind"] == "lora" and demo["format"] == "diffusers" and demo["rank"] == 4
    assert demo["components"] == ["unet", "text_encoder", "text_encoder_2"]
    assert demo["compatible_with"] == ["demo"] and demo["size_bytes"] > 0 and demo["error"] is None


def test_controlnets_are_listed(server):
    body = httpx.get(f"{server.url}/v1/controlnets").json()
    assert body["object"] == "list"
    listed = [(e["id"], e["kind"], e["single_file"]) for e in body["data"]]
    assert listed == [("demo-canny", "controlnet", False)]


def test_openai_sdk_lists_models_with_kind_and_size(server, demo_models):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    models = {model.id: model for model in client.models.list()}
    demo = models["demo"]
    assert demo.object == "model" and demo.owned_by == "pixelmill"
    assert demo.model_extra["kind"] == "checkpoint" and demo.model_extra["size_bytes"] > 0
    for name in models.keys() - {"demo"}:  # e.g. the demo refiner: folder without text_encoder
        has_te1 = (demo_models / "checkpoints" / name / "text_encoder").is_dir()
        assert models[name].model_extra["kind"] == ("checkpoint" if has_te1 else "refiner")


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_model_names_are_refused(server, name):
    body = {"model": name, "prompt": "x"}
    response = httpx.post(f"{server.url}/v1/images/generations", json=body, timeout=30)
    assert response.status_code in (400, 404) and response.json()["error"]["param"] == "model"
    accept = {"Accept": "application/json"}
    response = httpx.post(f"{server.url}/v1/generate", json=body, timeout=30, headers=accept)
    assert response.status_code in (400, 404) and response.json()["error"]["param"] == "model"


# --- admin scope (keyed server) -----------------------------------------------------------


def test_refresh_and_upload_need_the_admin_scope(keyed, demo_models):
    server, keys = keyed
    user, admin = ({"Authorization": f"Bearer {keys[k]}"} for k in ("user", "admin"))
    assert httpx.get(f"{server.url}/v1/loras", headers=user).status_code == 200
    assert httpx.post(f"{server.url}/v1/models/refresh", headers=user).status_code == 403
    files = {"file": ("x.safetensors", b"whatever", "application/octet-stream")}
    response = httpx.post(f"{server.url}/v1/loras", headers=user, data={"name": "x"}, files=files)
    assert response.status_code == 403 and not (demo_models / "loras" / "x.safetensors").exists()
    counts = httpx.post(f"{server.url}/v1/models/refresh", headers=admin).json()["counts"]
    assert set(counts) == {"checkpoint", "refiner", "lora", "controlnet", "vae"}
    assert counts["checkpoint"] == 1 and counts["lora"] >= 1 and counts["controlnet"] == 1


# --- uploads (own server) -----------------------------------------------------------------


def test_upload_stores_a_checked_lora_atomically(own, models):
    response = _upload(own, _lora_bytes(models), name="my-style")
    assert response.status_code == 201, response.text
    body = response.json()
    summary = (body["id"], body["format"], body["rank"], body["compatible_with"])
    assert summary == ("my-style", "diffusers", 4, ["demo"])
    assert "my-style" in _lora_names(own)
    assert (models / "loras" / "my-style.safetensors").read_bytes() == _lora_bytes(models)
    assert not [p for p in (models / "loras").iterdir() if p.name.startswith(".")]  # no temp file left


def test_an_existing_name_needs_overwrite(own, models):
    assert _upload(own, _lora_bytes(models), name="twice").status_code == 201
    _error(_upload(own, _lora_bytes(models), name="twice"), 400, "name")
    _error(_upload(own, _lora_bytes(models), name="twice", overwrite="maybe"), 400, "overwrite")
    assert _upload(own, _lora_bytes(models), name="twice", overwrite="true").status_code == 201


def test_a_kohya_lora_that_fits_is_accepted(own, models):
    def kohya(tensors: dict) -> dict:
        out = {}
        for key, value in tensors.items():
            component, rest = key.split(".", 1)
            rest = rest.replace(".lora_linear_layer.", ".lora.").replace(".lora.down.", ".lora_down.")
            module, half = rest.replace(".lora.up.", ".lora_up.").rsplit(".lora_", 1)
            prefix = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}[component]
            out[f"lora_{prefix}_{module.replace('.', '_')}.lora_{half}"] = value
        return out

    response = _upload(own, _lora_bytes(models, kohya), name="kohya-style")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "kohya"


def _set(key: str, shape: tuple[int, ...]):
    def edit(tensors: dict) -> dict:
        tensors[key] = np.zeros(shape, dtype=np.float32)
        return tensors
    return edit


UP = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight"
BAD_FILES = {
    "random bytes": lambda m: os.urandom(5000),
    "pickle bytes": lambda m: b"\x80\x04\x95" + b"\0" * 64,
    "wrong shape": lambda m: _lora_bytes(m, _set(UP, (8, 4))),
    "wrong rank": lambda m: _lora_bytes(m, _set(UP, (32, 2))),
    "unknown module": lambda m: _lora_bytes(
        m, lambda t: {k.replace(".to_q.", ".to_x."): v for k, v in t.items()}),
    "missing half": lambda m: _lora_bytes(m, lambda t: {k: v for k, v in t.items() if k != UP}),
    "not a LoRA": lambda m: _lora_bytes(m, _set("model.diffusion_model.out.2.weight", (4, 4))),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_refused_naming_file_and_not_stored(own, models, case):
    name = "bad-" + case.replace(" ", "-")
    message = _error(_upload(own, BAD_FILES[case](models), name=name), 400, "file")
    assert message and name not in _lora_names(own)
    assert not (models / "loras" / f"{name}.safetensors").exists()
    assert not [p for p in (models / "loras").iterdir() if p.name.startswith(".")]


def test_a_pickle_upload_is_refused_by_its_name(own, models):
    _error(_upload(own, _lora_bytes(models), filename="style.ckpt", name="from-ckpt"), 400, "file")
    assert "from-ckpt" not in _lora_names(own)


def test_a_file_over_the_upload_limit_is_413(own, models):
    response = _upload(own, os.urandom(UPLOAD_LIMIT + 1), name="huge")
    assert response.status_code == 413 and response.json()["error"]["param"] in ("body", "file")
    assert not (models / "loras" / "huge.safetensors").exists()


@pytest.mark.parametrize("name", [*TRAVERSALS, "../loras/x", "/tmp/x", "a/b", "", "evil.ckpt"])
def test_unsafe_upload_names_are_refused(own, models, name):
    before = sorted(models.parent.rglob("*"))
    _error(_upload(own, _lora_bytes(models), name=name), 400, "name")
    assert sorted(models.parent.rglob("*")) == before


@pytest.mark.parametrize(
    ("base", "status"),
    [("../demo", 400), ("%2e%2e%2fdemo", 400), ("..\\demo", 400), ("/abs/demo", 400), ("nope", 404),
     ("evil", 404), ("evil.ckpt", 404), ("escape", 404)],
)
def test_unusable_bases_are_refused_naming_base(own, models, base, status):
    _error(_upload(own, _lora_bytes(models), name="based", base=base), status, "base")
    assert not (models / "loras" / "based.safetensors").exists()


def test_symlinks_out_of_their_folders_are_neither_listed_nor_usable(own):
    assert "escape" not in _lora_names(own)
    kinds = {m["id"]: m["kind"] for m in httpx.get(f"{own.url}/v1/models").json()["data"]}
    assert "escape" not in kinds and kinds["demo"] == "checkpoint"
    response = httpx.post(f"{own.url}/v1/images/generations", json={"model": "escape", "prompt": "x"})
    _error(response, 404, "model")


def test_refresh_picks_up_files_dropped_in(own, models):
    shutil.copy(models / "loras" / "demo-style.safetensors", models / "loras" / "dropped.safetensors")
    counts = httpx.post(f"{own.url}/v1/models/refresh").json()["counts"]
    assert counts["lora"] >= 2 and counts["checkpoint"] == 1
    assert "dropped" in _lora_names(own)


def test_pickle_files_were_never_read(own, models, tmp_path):
    for name in ("evil", "evil.ckpt"):  # name them everywhere a request can
        httpx.post(f"{own.url}/v1/images/generations", json={"model": name, "prompt": "x"})
        _upload(own, b"x", name="probe", base=name)
    httpx.get(f"{own.url}/v1/loras")
    httpx.post(f"{own.url}/v1/models/refresh")
    control = tmp_path / "control"
    control.write_bytes(b"x")
    os.utime(control, (OLD_ATIME, OLD_ATIME + 10))
    control.read_bytes()
    if control.stat().st_atime == OLD_ATIME:
        pytest.skip("this filesystem does not record access times")
    for folder in ("checkpoints", "loras"):
        assert (models / folder / "evil.ckpt").stat().st_atime == OLD_ATIME, f"{folder}/evil.ckpt was read"

"""Name → path resolution stays inside its folder; pickles are never listed or opened."""

from __future__ import annotations

import builtins
import io
import json
import os
import struct
import threading
from pathlib import Path

import pytest

from pixelmill.engine.models import resolve_source
from pixelmill.core.errors import InvalidRequest, ModelUnavailable, NotFound
from pixelmill.registry.models_dir import PICKLE_SUFFIXES, ModelKind, ModelRegistry

EMPTY_SAFETENSORS = struct.pack("<Q", 2) + b"{}"
"""The smallest well-formed safetensors file: resolving a LoRA reads its header."""


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    (tmp_path / "checkpoints" / "good").mkdir(parents=True)
    (tmp_path / "checkpoints" / "good" / "model_index.json").write_text("{}")
    (tmp_path / "checkpoints" / "good" / "unet.safetensors").write_bytes(b"x")
    (tmp_path / "checkpoints" / "single.safetensors").write_bytes(b"y" * 10)
    (tmp_path / "checkpoints" / "evil.ckpt").write_bytes(b"pickle")
    (tmp_path / "checkpoints" / "pickled").mkdir()
    (tmp_path / "checkpoints" / "pickled" / "model_index.json").write_text("{}")
    (tmp_path / "checkpoints" / "pickled" / "weights.bin").write_bytes(b"pickle")
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(EMPTY_SAFETENSORS)
    (tmp_path / "loras" / "old.pt").write_bytes(b"pickle")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    outside.write_bytes(b"secret")
    os.symlink(outside, tmp_path / "loras" / "escape.safetensors")
    return tmp_path


def test_lists_only_safetensors_inside_their_folders(models):
    registry = ModelRegistry(models)
    registry.refresh()
    assert [e.name for e in registry.list(ModelKind.checkpoint)] == ["good", "single"]
    assert [e.name for e in registry.list(ModelKind.lora)] == ["style"]
    single = registry.find(ModelKind.checkpoint, "single")
    assert single.single_file and single.size_bytes == 10


@pytest.mark.parametrize(
    "name", ["../good", "/etc/passwd", "..%2Fgood", "a\\b", "good/../good", "", ".hidden", "x" * 200, "evil.ckpt"]
)
def test_unsafe_names_are_refused_before_the_filesystem(models, name):
    registry = ModelRegistry(models)
    registry.refresh()
    with pytest.raises((InvalidRequest, NotFound)) as info:
        registry.resolve(ModelKind.checkpoint, name, param="model")
    assert info.value.param == "model"


def test_symlink_escaping_the_folder_is_not_resolvable(models):
    registry = ModelRegistry(models)
    registry.refresh()
    with pytest.raises(NotFound):
        registry.resolve(ModelKind.lora, "escape", param="loras")


def test_symlink_swapped_in_after_the_scan_is_refused(models, tmp_path):
    registry = ModelRegistry(models)
    registry.refresh()
    target = models / "loras" / "style.safetensors"
    target.unlink()
    os.symlink(models.parent / f"{models.name}-outside.safetensors", target)
    with pytest.raises(InvalidRequest):
        registry.resolve(ModelKind.lora, "style", param="loras")


def test_unknown_name_lists_what_exists(models):
    registry = ModelRegistry(models)
    registry.refresh()
    with pytest.raises(NotFound, match="available: good, single"):
        registry.resolve(ModelKind.checkpoint, "missing", param="model")


def test_operator_model_values(models, tmp_path):
    registry = ModelRegistry(models)
    registry.refresh()
    assert resolve_source("good", registry).kind == "folder"
    assert resolve_source("single", registry).kind == "single_file"
    assert resolve_source("stabilityai/stable-diffusion-xl-base-1.0", registry).kind == "hub"
    assert resolve_source(str(models / "checkpoints" / "good"), registry).kind == "folder"
    with pytest.raises(ModelUnavailable, match="pickle"):
        resolve_source(str(models / "checkpoints" / "evil.ckpt"), registry)
    with pytest.raises(NotFound):
        resolve_source("not a model", registry)


# --- VAEs, refiners, counts ----------------------------------------------------------


def _diffusers_folder(path: Path, marker: str, index: dict | None = None) -> None:
    path.mkdir(parents=True)
    (path / marker).write_text(json.dumps(index or {}))
    (path / "weights.safetensors").write_bytes(b"w")


def test_vae_folders_and_files_are_a_kind(models):
    _diffusers_folder(models / "vae" / "sdxl-vae", "config.json")
    (models / "vae" / "fp16-fix.safetensors").write_bytes(b"v")
    (models / "vae" / "old.pt").write_bytes(b"pickle")
    registry = ModelRegistry(models)
    registry.refresh()
    assert [e.name for e in registry.list(ModelKind.vae)] == ["fp16-fix", "sdxl-vae"]
    assert registry.resolve(ModelKind.vae, "sdxl-vae", param="vae").listed_kind == "vae"


def test_refiner_layout_lists_as_refiner_and_resolves_as_checkpoint(models):
    te2 = ["transformers", "CLIPTextModelWithProjection"]
    refiner_index = {"text_encoder": [None, None], "text_encoder_2": te2}
    _diffusers_folder(models / "checkpoints" / "refiner", "model_index.json", refiner_index)
    _diffusers_folder(models / "checkpoints" / "base", "model_index.json",
                      {"text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": te2})
    registry = ModelRegistry(models)
    registry.refresh()
    kinds = {e.name: e.listed_kind for e in registry.list(ModelKind.checkpoint)}
    assert kinds == {"base": "checkpoint", "good": "checkpoint", "refiner": "refiner", "single": "checkpoint"}
    assert registry.resolve(ModelKind.checkpoint, "refiner", param="refiner").refiner
    assert registry.counts() == {"checkpoint": 3, "refiner": 1, "lora": 1, "controlnet": 0, "vae": 0}


def test_refresh_swaps_whole_tables_under_concurrent_readers(models):
    registry = ModelRegistry(models)
    registry.refresh()
    failures = []

    def read() -> None:
        for _ in range(300):
            if [e.name for e in registry.list(ModelKind.checkpoint)] != ["good", "single"]:
                failures.append("partial listing")
            registry.resolve(ModelKind.lora, "style", param="loras")

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    for _ in range(100):
        registry.refresh()
    for thread in readers:
        thread.join()
    assert not failures


# --- storing uploads -----------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_store_lora_checks_a_hidden_temp_file_then_renames(models):
    registry = ModelRegistry(models)
    registry.refresh()
    seen = []

    def check(path: Path) -> None:
        seen.append((path.parent, path.name, path.read_bytes()))
        assert registry.find(ModelKind.lora, "new") is None  # not visible while being checked

    entry = registry.store_lora("new", b"lora-bytes", check=check)
    folder, temp_name, data = seen[0]
    assert folder == models / "loras" and temp_name.startswith(".") and not temp_name.endswith(".safetensors")
    assert data == b"lora-bytes" and entry.path == models / "loras" / "new.safetensors"
    assert registry.find(ModelKind.lora, "new") == entry  # refreshed
    expected = ["escape.safetensors", "new.safetensors", "old.pt", "style.safetensors"]
    assert _listing(models / "loras") == expected


def test_a_failed_check_stores_nothing(models):
    registry = ModelRegistry(models)
    registry.refresh()
    before = _listing(models / "loras")

    def refuse(path: Path) -> None:
        raise InvalidRequest("bad LoRA", param="file")

    with pytest.raises(InvalidRequest) as info:
        registry.store_lora("new", b"x", check=refuse)
    assert info.value.param == "file" and _listing(models / "loras") == before


def test_existing_name_needs_overwrite(models):
    registry = ModelRegistry(models)
    registry.refresh()
    with pytest.raises(InvalidRequest, match="overwrite") as info:
        registry.store_lora("style", b"new")
    assert info.value.param == "name"
    assert (models / "loras" / "style.safetensors").read_bytes() == EMPTY_SAFETENSORS
    registry.store_lora("style.safetensors", b"new", overwrite=True)
    assert (models / "loras" / "style.safetensors").read_bytes() == b"new"


def test_overwriting_an_escaping_symlink_replaces_the_link_not_its_target(models):
    registry = ModelRegistry(models)
    registry.refresh()
    outside = models.parent / f"{models.name}-outside.safetensors"
    registry.store_lora("escape", b"mine", overwrite=True)
    assert outside.read_bytes() == b"secret"
    link = models / "loras" / "escape.safetensors"
    assert not link.is_symlink() and link.read_bytes() == b"mine"


@pytest.mark.parametrize(
    "name", ["../x", "../../etc/cron.d/x", "/tmp/x", "%2e%2e%2fx", "..%2Fx", "a\\b", "..\\x", "x/y", "", ".x",
             "evil.ckpt", "evil.pt"],
)
def test_store_refuses_unsafe_names_before_writing(models, name):
    registry = ModelRegistry(models)
    registry.refresh()
    def files() -> set[Path]:
        # Everything under the models dir, and what sits next to it (where "../x" would land);
        # not the rest of pytest's temp dir, where other tests' servers keep writing.
        return {*models.rglob("*"), *models.parent.iterdir()}

    before = files()
    with pytest.raises(InvalidRequest) as info:
        registry.store_lora(name, b"data", check=lambda path: pytest.fail("checked an unsafe name"))
    assert info.value.param == "name"
    assert files() == before


def test_pickle_files_are_never_opened_by_the_registry(models, monkeypatch):
    real_open = io.open

    def guarded(file, *args, **kwargs):
        assert Path(str(file)).suffix not in PICKLE_SUFFIXES, f"opened {file}"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    registry = ModelRegistry(models)
    registry.refresh()
    for kind in ModelKind:
        for name in ("evil", "evil.ckpt", "old", "old.pt", "pickled", "weights.bin"):
            with pytest.raises((InvalidRequest, NotFound)):
                registry.resolve(kind, name, param="model")


# --- issue 19 §7: refiners as base models, broken LoRA files ----------------------------------


def _refiner_and_base(models: Path) -> ModelRegistry:
    te2 = ["transformers", "CLIPTextModelWithProjection"]
    _diffusers_folder(models / "checkpoints" / "refiner", "model_index.json",
                      {"text_encoder": [None, None], "text_encoder_2": te2})
    registry = ModelRegistry(models)
    registry.refresh()
    return registry


def test_a_refiner_is_not_a_base_model(models):
    registry = _refiner_and_base(models)
    assert registry.base_model("good").name == "good"
    with pytest.raises(InvalidRequest, match="refiner.name") as info:
        registry.base_model("refiner")
    assert info.value.param == "model" and "base models: good, single" in info.value.message
    assert registry.resolve(ModelKind.checkpoint, "refiner", param="refiner.name").refiner  # as refiner: fine
    with pytest.raises(NotFound):
        registry.base_model("missing")


def test_the_operator_cannot_serve_a_refiner(models):
    registry = _refiner_and_base(models)
    for value in ("refiner", str(models / "checkpoints" / "refiner")):
        with pytest.raises(InvalidRequest, match="refiner") as info:
            resolve_source(value, registry)
        assert info.value.param == "model"


@pytest.mark.parametrize(("content", "reason"), [
    (b"z", "shorter than"),
    (struct.pack("<Q", 11) + b"not json!!!", "not JSON"),
    (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_a_broken_lora_file_is_refused_by_name_with_the_reason(models, content, reason):
    (models / "loras" / "broken.safetensors").write_bytes(content)
    registry = ModelRegistry(models)
    registry.refresh()
    assert registry.find(ModelKind.lora, "broken") is not None  # listed: the listing shows why
    with pytest.raises(InvalidRequest, match=reason) as info:
        registry.resolve(ModelKind.lora, "broken", param="loras[1].name")
    assert info.value.param == "loras[1].name" and "'broken' is not usable" in info.value.message


def test_a_repaired_lora_file_is_read_again(models):
    path = models / "loras" / "broken.safetensors"
    path.write_bytes(b"z")
    registry = ModelRegistry(models)
    registry.refresh()
    with pytest.raises(InvalidRequest):
        registry.resolve(ModelKind.lora, "broken", param="loras[0].name")
    path.write_bytes(EMPTY_SAFETENSORS)
    os.utime(path, ns=(1, 2))  # a new mtime even on coarse clocks: the cache is keyed by it
    assert registry.resolve(ModelKind.lora, "broken", param="loras[0].name").name == "broken"

"""Name → path resolution stays inside its folder; pickles are never listed or opened."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pixelmill.engine.models import resolve_source
from pixelmill.errors import InvalidRequest, ModelUnavailable, NotFound
from pixelmill.registry import ModelKind, ModelRegistry


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
    (tmp_path / "loras" / "style.safetensors").write_bytes(b"z")
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

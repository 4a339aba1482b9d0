"""Generated model folders: written atomically, checked by manifest before reuse, listed by name.

The server without ``--model`` writes the demo models into ``<data dir>/demo-models`` when
it falls back to them; the registry lists that folder next to the models directory, so
the demo's LoRA, ControlNet and refiner are usable like the model itself. A start killed
halfway must not leave a folder that a later start reuses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pixelmill.registry import manifest
from pixelmill.registry.manifest import DEMO_MODELS_KIND, MANIFEST_NAME, manifest_problem, publish, write_manifest
from pixelmill.registry.models_dir import ModelKind, ModelRegistry
from pixelmill.services import model_registry
from pixelmill.settings import Settings


def _fake_demo(folder: Path, *, manifest: bool = True) -> Path:
    """A folder shaped like the demo models (tiny fake files), with or without its manifest."""
    (folder / "checkpoints" / "demo" / "unet").mkdir(parents=True)
    (folder / "checkpoints" / "demo" / "model_index.json").write_text('{"text_encoder": ["x", "y"]}')
    (folder / "checkpoints" / "demo" / "unet" / "w.safetensors").write_bytes(b"0" * 64)
    (folder / "loras").mkdir()
    (folder / "loras" / "demo-style.safetensors").write_bytes(b"1" * 32)
    (folder / "controlnets" / "demo-canny").mkdir(parents=True)
    (folder / "controlnets" / "demo-canny" / "config.json").write_text("{}")
    (folder / "controlnets" / "demo-canny" / "w.safetensors").write_bytes(b"2" * 16)
    if manifest:
        write_manifest(folder, kind=DEMO_MODELS_KIND)
    return folder


def test_a_manifest_names_what_is_missing_or_cut_short(tmp_path):
    folder = _fake_demo(tmp_path / "demo-models")
    assert manifest_problem(folder, kind=DEMO_MODELS_KIND) is None
    assert "not a format-1 other manifest" in manifest_problem(folder, kind="other")
    (folder / "loras" / "demo-style.safetensors").write_bytes(b"1" * 5)
    assert "demo-style.safetensors has 5 bytes" in manifest_problem(folder, kind=DEMO_MODELS_KIND)
    (folder / "loras" / "demo-style.safetensors").unlink()
    assert "loras/demo-style.safetensors is missing" in manifest_problem(folder, kind=DEMO_MODELS_KIND)
    (folder / MANIFEST_NAME).unlink()
    assert "no manifest" in manifest_problem(folder, kind=DEMO_MODELS_KIND)


def test_the_registry_lists_a_generated_root_once_it_appears_and_the_models_dir_wins(tmp_path):
    models, demo = tmp_path / "models", tmp_path / "data" / "demo-models"
    (models / "loras").mkdir(parents=True)
    (models / "loras" / "demo-style.safetensors").write_bytes(b"mine")
    registry = ModelRegistry(models, generated_roots=((demo, DEMO_MODELS_KIND),))
    registry.refresh()
    assert registry.find(ModelKind.controlnet, "demo-canny") is None

    staged = _fake_demo(manifest.staging_folder(demo))
    publish(staged, demo)  # what the engine's fallback does, after the registry's scan

    # No refresh call: the next lookup notices the folder that appeared.
    assert [e.name for e in registry.list(ModelKind.controlnet)] == ["demo-canny"]
    resolved = registry.resolve(ModelKind.controlnet, "demo-canny", param="x")
    assert resolved.path == demo / "controlnets" / "demo-canny"
    assert registry.find(ModelKind.checkpoint, "demo").path == demo / "checkpoints" / "demo"
    assert registry.find(ModelKind.lora, "demo-style").path == models / "loras" / "demo-style.safetensors"
    assert registry.counts()["controlnet"] == 1


def test_an_incomplete_generated_root_is_not_listed_and_is_discarded_before_reuse(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    partial = _fake_demo(settings.demo_models_dir, manifest=False)  # a first start killed mid-write
    registry = ModelRegistry(settings.models_dir, generated_roots=((partial, DEMO_MODELS_KIND),))
    registry.refresh()
    assert registry.list(ModelKind.checkpoint) == []

    registry = model_registry(settings)  # what a server without --model builds
    assert not partial.exists()  # gone: the engine's fallback writes it again
    assert registry.generated_roots == ((settings.demo_models_dir, DEMO_MODELS_KIND),)
    assert list(settings.data_dir.iterdir()) == []  # nothing left beside it either

    complete = _fake_demo(settings.demo_models_dir)
    assert manifest.discard_incomplete(complete, kind=DEMO_MODELS_KIND) is None and complete.exists()
    assert model_registry(Settings(data_dir=tmp_path / "data", model="x")).generated_roots == ()


def test_a_demo_write_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    from pixelmill.engine import demo

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(demo, "_write_lora", broken)  # fails after the checkpoint was saved
    target = tmp_path / "data" / "demo-models"
    with pytest.raises(OSError):
        demo.write_demo_models(target)
    assert list((tmp_path / "data").iterdir()) == []  # no target, no half-built sibling


def test_demo_models_are_published_whole_with_a_manifest_or_item_by_item_beside_other_models(tmp_path):
    from pixelmill.engine.demo import write_demo_models

    own = tmp_path / "demo-models"
    write_demo_models(own)
    assert manifest_problem(own, kind=DEMO_MODELS_KIND) is None
    files = json.loads((own / MANIFEST_NAME).read_text())["files"]
    assert "checkpoints/demo/model_index.json" in files and "loras/demo-style.safetensors" in files
    assert oct(own.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700

    shared = tmp_path / "models"
    (shared / "checkpoints").mkdir(parents=True)
    (shared / "checkpoints" / "mine.safetensors").write_bytes(b"user's own")
    write_demo_models(shared)
    assert (shared / "checkpoints" / "mine.safetensors").read_bytes() == b"user's own"
    assert not (shared / MANIFEST_NAME).exists()  # a user's folder gets no manifest
    registry = ModelRegistry(shared)
    registry.refresh()
    assert {e.name for e in registry.list(ModelKind.checkpoint)} == {"mine", "demo", "demo-refiner"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current

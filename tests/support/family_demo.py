"""The FLUX.1 and SD3.5 demo models (plus SDXL, for switching) for the model-family tests.

Import the fixtures into a test module (``from tests.support.family_demo import
family_models, family_engine  # noqa: F401``); ``family_models`` is written once per process.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pixelmill.core.types import GenerationRequest  # noqa: E402


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny demo models of every family: demo, demo-flux, demo-flux-schnell, demo-sd3 and LoRAs."""
    from pixelmill.engine.demo import write_demo_models

    root = tmp_path_factory.mktemp("family-models")
    write_demo_models(root, size="tiny", families=("sdxl", "flux", "sd3"))
    return root


def family_settings(models: Path, data: Path, **overrides):
    from pixelmill.settings import Settings

    return Settings(**({"models_dir": models, "model": "demo-flux-schnell", "data_dir": data, "device": "cpu"}
                       | overrides))


def started_engine(models: Path, data: Path, **overrides):
    """A started CPU engine over the family demos (default model: demo-flux-schnell)."""
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelRegistry

    settings = family_settings(models, data, **overrides)
    engine = Engine(settings, ModelRegistry(settings.models_dir))
    engine.start()
    return engine


@pytest.fixture(scope="module")
def family_engine(family_models, tmp_path_factory):
    """A started CPU engine over the family demos that keeps every demo loaded (a 1 GB
    budget; they are a few MB): the tests alternate models, and a switch costs a load."""
    engine = started_engine(family_models, tmp_path_factory.mktemp("data"), model_cache_gb=1.0)
    yield engine
    engine.unload()


def family_request(model: str, **fields) -> GenerationRequest:
    """A small, fast request for ``model`` (64 px, 2 steps, fixed seed)."""
    return GenerationRequest(**({"prompt": "a red cat", "model": model, "width": 64, "height": 64, "steps": 2,
                                 "seed": 7} | fields))

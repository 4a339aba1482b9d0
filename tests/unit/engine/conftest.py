"""Fixtures shared by the engine tests: the tiny demo model, loaded on the CPU."""

from __future__ import annotations

import pytest

from pixelmill.engine.device import select_device
from pixelmill.engine.loader import load_folder
from pixelmill.engine.pipelines import PipelineSet


@pytest.fixture(scope="session")
def models_dir(demo_models):
    """The session's tiny demo models directory (read-only for tests)."""
    return demo_models


@pytest.fixture(scope="module")
def cpu():
    return select_device("cpu")


@pytest.fixture(scope="module")
def pipes(models_dir, cpu):
    """A fresh PipelineSet of the demo model per module (tests may load adapters into it)."""
    return PipelineSet(load_folder(models_dir / "checkpoints" / "demo", cpu), "demo", cpu)


@pytest.fixture(scope="module")
def settings(demo_models, tmp_path_factory):
    """Settings serving the session's demo models (a module's own copy of the data dir)."""
    from pixelmill.settings import Settings

    return Settings(models_dir=demo_models, model="demo", data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def engine(settings):
    """A started engine per module, serving the demo model on the CPU."""
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelRegistry

    engine = Engine(settings, ModelRegistry(settings.models_dir))
    engine.start()
    return engine

"""Engines for tests that need their own (a private models dir, non-default settings)."""

from __future__ import annotations

from pathlib import Path

import pytest


def make_engine(models: Path, tmp_path_factory: pytest.TempPathFactory, **settings):
    """A started engine serving ``demo`` from ``models`` with extra ``settings``."""
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelRegistry
    from pixelmill.settings import Settings

    engine = Engine(Settings(models_dir=models, model="demo", data_dir=tmp_path_factory.mktemp("data"), **settings),
                    ModelRegistry(models))
    engine.start()
    return engine


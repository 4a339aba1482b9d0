"""Models directories the registry tests may change: a private copy, read by a fresh registry."""

from __future__ import annotations

import shutil
from pathlib import Path

from pixelmill.registry.models_dir import ModelRegistry


def private_copy(source: Path, tmp_path: Path) -> Path:
    """A copy of the models directory ``source`` under ``tmp_path`` (tests add and rewrite files)."""
    root = tmp_path / "models"
    shutil.copytree(source, root)
    return root


def refreshed_registry(root: Path) -> ModelRegistry:
    """A registry over ``root`` that has scanned it."""
    registry = ModelRegistry(root)
    registry.refresh()
    return registry

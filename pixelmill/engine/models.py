"""Where a model comes from: a name in the models directory, a path, or a hub id.

This turns the operator's ``--model`` value (or a request's ``model``) into a
:class:`ModelSource`, and loads it with the right loader. The default model falls back
to the demo model when it cannot be loaded; an explicitly chosen one never does.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pixelmill.core.errors import ModelUnavailable, NotFound
from pixelmill.registry.models_dir import PICKLE_SUFFIXES, ModelKind, ModelRegistry

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """A loadable model: ``kind`` says which loader, ``location`` is a path or hub id."""

    name: str
    kind: Literal["folder", "single_file", "hub"]
    location: str


def resolve_source(value: str, registry: ModelRegistry, *, param: str = "model") -> ModelSource:
    """Resolve an operator-given model: registry name, then local path, then hub id."""
    entry = registry.find(ModelKind.checkpoint, value)
    if entry is not None:
        kind = "single_file" if entry.single_file else "folder"
        return ModelSource(entry.name, kind, str(entry.path))
    path = Path(value).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelUnavailable(
            f"{value}: pickle checkpoints can run code when loaded and are refused; "
            "convert it to .safetensors",
            param=param,
        )
    if path.is_dir():
        return ModelSource(path.name, "folder", str(path))
    if path.is_file() and path.suffix == ".safetensors":
        return ModelSource(path.stem, "single_file", str(path))
    if HUB_ID.fullmatch(value):
        return ModelSource(value, "hub", value)
    raise NotFound(
        f"model {value!r} is not in {registry.root / 'checkpoints'}, not a path and not a hub id",
        param=param,
    )


def load_source(source: ModelSource, device, *, local_files_only: bool):
    """Load ``source`` onto ``device`` and return the base SDXL pipeline."""
    from pixelmill.engine import loader  # diffusers is heavy: import on first load only

    log.info("loading model %s (%s: %s)", source.name, source.kind, source.location)
    if source.kind == "folder":
        return loader.load_folder(Path(source.location), device)
    if source.kind == "single_file":
        return loader.load_single_file(Path(source.location), device)
    return loader.load_hub(source.location, device, local_files_only=local_files_only)

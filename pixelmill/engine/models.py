"""Where a model comes from: a name in the models directory, a path, or a hub id.

This turns the operator's ``--model`` value (or a request's ``model``) into a
:class:`ModelSource`, and loads it with the right loader. The default model falls back
to the demo model when it cannot be loaded; an explicitly chosen one never does.

An SDXL refiner folder is never a base model: :func:`check_base_source` refuses it
(``InvalidRequest`` naming ``model``) before the model cache frees anything to make room,
so a mistaken request leaves the loaded model in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pixelmill.core.errors import InvalidRequest, ModelUnavailable, NotFound
from pixelmill.registry.models_dir import HUB_ID, PICKLE_SUFFIXES, ModelKind, ModelRegistry, is_refiner_folder

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ModelSource:
    """A loadable model: ``kind`` says which loader, ``location`` is a path or hub id."""

    name: str
    kind: Literal["folder", "single_file", "hub"]
    location: str


def resolve_source(value: str, registry: ModelRegistry, *, param: str = "model") -> ModelSource:
    """Resolve an operator-given model: registry name, then local path, then hub id.

    A refiner (registry entry or folder) is refused: it cannot be the served model.
    """
    entry = registry.find(ModelKind.checkpoint, value)
    if entry is not None:
        kind = "single_file" if entry.single_file else "folder"
        return check_base_source(ModelSource(entry.name, kind, str(entry.path)), param=param)
    path = Path(value).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelUnavailable(
            f"{value}: pickle checkpoints can run code when loaded and are refused; "
            "convert it to .safetensors",
            param=param,
        )
    if path.is_dir():
        return check_base_source(ModelSource(path.name, "folder", str(path)), param=param)
    if path.is_file() and path.suffix == ".safetensors":
        return ModelSource(path.stem, "single_file", str(path))
    if HUB_ID.fullmatch(value):
        return ModelSource(value, "hub", value)
    raise NotFound(
        f"model {value!r} is not in {registry.root / 'checkpoints'}, not a path and not a hub id",
        param=param,
    )


def check_base_source(source: ModelSource, *, param: str = "model") -> ModelSource:
    """``source``, unless it is an SDXL refiner folder (InvalidRequest naming ``param``).

    Reads only ``model_index.json``. Hub ids are not checked here: only an operator can
    name one, and loading a refiner from the hub fails on its missing text encoder.
    """
    if source.kind == "folder" and is_refiner_folder(Path(source.location)):
        raise InvalidRequest(f"{source.name!r} is an SDXL refiner, not a base model: use it as "
                             "refiner.name with a base model as model", param=param)
    return source


def load_source(source: ModelSource, device, *, local_files_only: bool, options=None):
    """Load ``source`` onto ``device`` and return its base (txt2img) pipeline, of whichever
    family its files are; ``options``: the T5 settings (``engine.families.TextEncoderOptions``)."""
    from pixelmill.engine import loader  # diffusers is heavy: import on first load only

    log.info("loading model %s (%s: %s)", source.name, source.kind, source.location)
    if source.kind == "folder":
        return loader.load_folder(Path(source.location), device, options)
    if source.kind == "single_file":
        return loader.load_single_file(Path(source.location), device, options=options)
    return loader.load_hub(source.location, device, local_files_only=local_files_only, options=options)

"""Which model family a checkpoint is, read from its files (never from its name).

* a diffusers folder: ``model_index.json``'s ``_class_name`` (``StableDiffusionXL…``,
  ``Flux…``, ``StableDiffusion3…``); the variant from ``transformer/config.json``
  (FLUX: ``guidance_embeds`` true = dev, false = schnell; SD3: 24 layers = medium, else large);
* a single ``.safetensors`` file: the tensor names in its header (read without the tensor
  data): FLUX's ``double_blocks``/``single_blocks`` (BFL layout) or ``single_transformer_blocks``
  (diffusers layout), with ``guidance_in``/``guidance_embedder`` for dev; SD3's ``joint_blocks``
  (counted for the variant); SDXL's ``conditioner.embedders.1`` or ``input_blocks``;
* a hub id: the ``model_index.json`` in the local Hugging Face cache, when it is there.

:class:`FamilyResolver` answers the request policy's question "what family is the model
this request names?" from the models directory, a path or the cache; results are cached
per file modification time. No diffusers, no torch: the API host calls it per request.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from pixelmill.core.families import FLUX, SD3, SDXL, ModelFamily, family_for
from pixelmill.registry.models_dir import HUB_ID, PICKLE_SUFFIXES

_CLASS_PREFIXES = (("StableDiffusionXL", SDXL), ("Flux", FLUX), ("StableDiffusion3", SD3))
_SD3_BLOCK = re.compile(r"(?:^|\.)joint_blocks\.(\d+)\.")
_SD3_DIFFUSERS_BLOCK = re.compile(r"^(?:transformer\.)?transformer_blocks\.(\d+)\.context_block")


def family_of_class(class_name: str) -> str | None:
    """The family of a diffusers pipeline class name (``FluxImg2ImgPipeline`` -> ``flux``)."""
    for prefix, family in _CLASS_PREFIXES:
        if class_name.startswith(prefix):
            return family
    return None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def detect_folder(folder: Path) -> ModelFamily | None:
    """The family of a diffusers folder, or None when ``model_index.json`` names none we serve."""
    index = _read_json(Path(folder) / "model_index.json")
    family = family_of_class(str(index.get("_class_name", ""))) if index else None
    if family is None:
        return None
    return family_for(family, _variant(family, _read_json(Path(folder) / "transformer" / "config.json") or {}))


def _variant(family: str, transformer_config: dict) -> str | None:
    if family == FLUX and "guidance_embeds" in transformer_config:
        return "dev" if transformer_config["guidance_embeds"] else "schnell"
    if family == SD3 and "num_layers" in transformer_config:
        return "medium" if transformer_config["num_layers"] <= 24 else "large"
    return None


def detect_keys(keys: list[str] | set[str]) -> ModelFamily | None:
    """The family of a single-file checkpoint from its tensor names (BFL, SAI, SGM or diffusers layout)."""
    keys = set(keys)

    def has(*parts: str) -> bool:
        return any(part in key for key in keys for part in parts)

    if has("double_blocks.", "single_transformer_blocks.") and not has("joint_blocks."):
        return family_for(FLUX, "dev" if has("guidance_in.", "guidance_embedder.") else "schnell")
    blocks = {int(m.group(1)) for key in keys for m in [_SD3_BLOCK.search(key) or _SD3_DIFFUSERS_BLOCK.search(key)] if m}
    if blocks:
        return family_for(SD3, "medium" if max(blocks) + 1 <= 24 else "large")
    if has("conditioner.embedders.1.", "input_blocks.", "add_embedding.linear_1"):
        return family_for(SDXL)
    return None


def detect_file(path: Path) -> ModelFamily | None:
    """The family of a single ``.safetensors`` checkpoint, from its header alone."""
    from pixelmill.registry.lora_check import HeaderError, read_header  # lora_check imports models_dir

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES or path.suffix != ".safetensors":
        return None
    try:
        return detect_keys(list(read_header(path)))
    except (OSError, HeaderError):
        return None


def detect_path(path: Path) -> ModelFamily | None:
    """:func:`detect_folder` or :func:`detect_file`, whichever ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return detect_folder(path)
    if path.is_file():
        return detect_file(path)
    return None


def detect_hub_cache(repo_id: str) -> ModelFamily | None:
    """The family of a hub model from the local cache only (None when not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return None
    index = try_to_load_from_cache(repo_id, "model_index.json")
    if not isinstance(index, str):
        return None
    data = _read_json(Path(index)) or {}
    family = family_of_class(str(data.get("_class_name", "")))
    if family is None:
        return None
    config = try_to_load_from_cache(repo_id, "transformer/config.json")
    return family_for(family, _variant(family, _read_json(Path(config)) if isinstance(config, str) else {}))


@functools.lru_cache(maxsize=256)
def _cached(path: str, stamp: tuple) -> ModelFamily | None:
    return detect_path(Path(path))


def _stamp(path: Path) -> tuple | None:
    marker = path / "model_index.json" if path.is_dir() else path
    try:
        stat = marker.stat()
    except OSError:
        return None
    config = path / "transformer" / "config.json"
    extra = config.stat().st_mtime_ns if path.is_dir() and config.is_file() else 0
    return (stat.st_mtime_ns, stat.st_size, extra)


class FamilyResolver:
    """``resolver(model_name) -> ModelFamily | None`` for the request policy.

    ``None`` asks for the default model: ``default_model`` (a checkpoint name, path or hub
    id) or, when no model is configured, SDXL (the SDXL base, or the SDXL demo it falls
    back to). A name is looked up in each root's ``checkpoints/`` (models directory first),
    then as a path, then in the hub cache. None means "not known here": the engine
    checks again once the model is loaded.
    """

    def __init__(self, roots: tuple[Path, ...], default_model: str | None = None):
        self.roots = tuple(Path(root) for root in roots)
        self.default_model = default_model

    def __call__(self, model: str | None) -> ModelFamily | None:
        if not model:
            return self(self.default_model) if self.default_model else family_for(SDXL)
        return self.locate(model)

    def locate(self, model: str) -> ModelFamily | None:
        """The family of ``model`` without the default-model rule."""
        candidates = []
        if "/" not in model and "\\" not in model and not model.startswith("."):
            for root in self.roots:
                candidates += [root / "checkpoints" / model, root / "checkpoints" / f"{model}.safetensors"]
        candidates.append(Path(model).expanduser())
        for path in candidates:
            stamp = _stamp(path)
            if stamp is not None:
                return _cached(str(path.resolve()), stamp)
        if HUB_ID.fullmatch(model):
            return detect_hub_cache(model)
        return None


@functools.lru_cache(maxsize=16)
def family_resolver(roots: tuple[Path, ...], default_model: str | None) -> FamilyResolver:
    """One resolver per (roots, default model): ``Settings.policy()`` is called per request."""
    return FamilyResolver(roots, default_model)

"""Load base pipelines (SDXL, FLUX.1, SD 3.5) from a diffusers folder, a single safetensors
file or the hub.

The family is read from the files (:mod:`pixelmill.registry.families`): a folder's
``model_index.json``, a file's safetensors header, a hub repo's ``model_index.json``.
FLUX.1 and SD3.5 single files are the transformer alone (Black Forest Labs' and Stability's
release format); the rest of the pipeline (text encoders, VAE, scheduler, tokenizers) comes
from a diffusers folder ``<name>.base/`` next to the file, else from the local Hugging Face
cache of the variant's official repo (:data:`FAMILY_BASE_REPOS`), else (unless
``HF_HUB_OFFLINE``) from a download of it. T5 options: :mod:`pixelmill.engine.families`.

Only safetensors are ever read: pickle-based formats (``.ckpt``, ``.pt``, ``.bin``,
``.pth``, ``.pkl``) can run arbitrary code when opened and are refused by name,
before any file is touched. Every loader returns the pipeline already passed through
:func:`pixelmill.engine.device.prepare_pipeline`; any loading failure becomes
:class:`~pixelmill.core.errors.ModelUnavailable` with the underlying cause in the message.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pixelmill.engine.device import DeviceConfig, prepare_pipeline
from pixelmill.core.errors import ModelUnavailable, PixelmillError
from pixelmill.core.families import FLUX, SD3, SDXL, ModelFamily
from pixelmill.engine.families import (TextEncoderOptions, apply_text_encoder_dtype, pipeline_class,
                                       quantized_text_encoder)
from pixelmill.registry.families import detect_file, detect_folder, detect_hub_cache, family_of_class

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".bin", ".pth", ".pkl", ".pickle"})
SDXL_BASE_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
BASE_SUFFIX = ".base"
FAMILY_BASE_REPOS = {
    (FLUX, "dev"): "black-forest-labs/FLUX.1-dev", (FLUX, "schnell"): "black-forest-labs/FLUX.1-schnell",
    (SD3, "large"): "stabilityai/stable-diffusion-3.5-large", (SD3, "medium"): "stabilityai/stable-diffusion-3.5-medium",
}
"""Where a FLUX/SD3 transformer-only file's other components come from, without ``<name>.base/``."""
TOKENIZERS_SUFFIX = ".tokenizers"
"""A single-file checkpoint ``name.safetensors`` may bring its tokenizers in a sibling
folder ``name.tokenizers/`` holding ``tokenizer/`` and ``tokenizer_2/`` (copy them from
any SDXL diffusers folder)."""


def sdxl_config_dir() -> Path:
    """The shipped SDXL base 1.0 diffusers config folder (architecture only, no weights)."""
    return Path(__file__).resolve().parent / "sdxl_config"


def refuse_pickle(path: Path) -> None:
    """Raise :class:`ModelUnavailable` unless ``path`` names a ``.safetensors`` file.

    Decided from the name alone, so an unsafe file is never opened.
    """
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelUnavailable(
            f"{Path(path).name}: pickle-based checkpoints ({suffix}) are not loaded because "
            "opening them can run arbitrary code; convert the model to .safetensors")
    if suffix != ".safetensors":
        raise ModelUnavailable(f"{Path(path).name}: only .safetensors checkpoints are supported")


def load_folder(path: Path, cfg: DeviceConfig, options: TextEncoderOptions | None = None) -> Any:
    """Load a diffusers-format folder (one with ``model_index.json``) of any served family."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise ModelUnavailable(f"{path.name}: not a diffusers model folder (no model_index.json)")
    family = detect_folder(path)
    return _load_pipeline(str(path), family.family if family else SDXL, cfg, options or TextEncoderOptions(),
                          name=path.name, local_files_only=True)


def _load_pipeline(location: str, family: str, cfg: DeviceConfig, options: TextEncoderOptions, *, name: str,
                     local_files_only: bool, **extra: Any) -> Any:
    """``from_pretrained`` of ``family``'s txt2img pipeline, T5 options applied, then prepared."""
    kwargs: dict[str, Any] = dict(dtype=cfg.dtype, use_safetensors=True, local_files_only=local_files_only, **extra)
    if family == SDXL:
        kwargs["add_watermarker"] = False
    with _as_unavailable(name):
        kwargs |= quantized_text_encoder(family, location, cfg, options, local_files_only=local_files_only)
        pipe = pipeline_class(family).from_pretrained(location, **kwargs)
        pipe = prepare_pipeline(pipe, cfg)
        apply_text_encoder_dtype(pipe, family, cfg, options)
        return pipe


def load_transformer_file(path: Path, family: ModelFamily, cfg: DeviceConfig, options: TextEncoderOptions) -> Any:
    """A FLUX.1/SD3.5 single file: its transformer, the other components from a base (see module doc)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    refuse_pickle(path)  # from the name alone, before anything opens the file
    base_dir = path.parent / (path.stem + BASE_SUFFIX)
    local_only = True
    if (base_dir / "model_index.json").is_file():
        base = str(base_dir)
    else:
        base = FAMILY_BASE_REPOS.get((family.family, family.variant or "large"))
        if base is None:
            raise ModelUnavailable(f"{path.name}: no base for {family.label}; put a diffusers folder of the "
                                   f"same model in {base_dir.name}/")
        local_only = _offline() or detect_hub_cache(base) is not None
    model_cls = FluxTransformer2DModel if family.family == FLUX else SD3Transformer2DModel
    with _as_unavailable(path.name):
        transformer = model_cls.from_single_file(str(path), config=base, subfolder="transformer",
                                                 torch_dtype=cfg.dtype, local_files_only=local_only)
    return _load_pipeline(base, family.family, cfg, options, name=path.name, local_files_only=local_only,
                          transformer=transformer)


def load_single_file(path: Path, cfg: DeviceConfig, config_dir: Path | None = None,
                     options: TextEncoderOptions | None = None) -> Any:
    """Load a single-file ``.safetensors`` checkpoint: FLUX.1/SD3.5 transformer files go to
    :func:`load_transformer_file`; SDXL ones (original SGM/LDM layout) load as below.

    The architecture comes from ``config_dir`` (a diffusers-format folder), by default
    the SDXL base 1.0 configs shipped with pixelmill, so no network is needed for it.
    The CLIP tokenizers cannot be shipped and are resolved in this order:

    1. ``config_dir/tokenizer`` and ``config_dir/tokenizer_2``, if ``config_dir`` has them;
    2. ``<name>.tokenizers/tokenizer`` and ``<name>.tokenizers/tokenizer_2`` next to the
       checkpoint ``<name>.safetensors``;
    3. the local Hugging Face cache of ``stabilityai/stable-diffusion-xl-base-1.0``;
    4. a download of those tokenizer files from the hub, unless ``HF_HUB_OFFLINE`` is set.
    """
    from diffusers import StableDiffusionXLPipeline

    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise ModelUnavailable(f"{path.name}: checkpoint file not found")
    family = detect_file(path)
    if family is not None and family.family != SDXL:
        return load_transformer_file(path, family, cfg, options or TextEncoderOptions())
    config_dir = Path(config_dir) if config_dir is not None else sdxl_config_dir()
    tokenizer, tokenizer_2 = resolve_tokenizers(path, config_dir)
    with _as_unavailable(path.name):
        pipe = StableDiffusionXLPipeline.from_single_file(
            str(path), config=str(config_dir), tokenizer=tokenizer, tokenizer_2=tokenizer_2,
            dtype=cfg.dtype, local_files_only=True, add_watermarker=False)
        return prepare_pipeline(pipe, cfg)


def hub_family(repo_id: str, *, local_files_only: bool) -> str:
    """The family of a hub repo from its ``model_index.json`` (cache, else downloaded)."""
    family = detect_hub_cache(repo_id)
    if family is None and not local_files_only:
        from huggingface_hub import hf_hub_download

        with _as_unavailable(repo_id):
            index = json.loads(Path(hf_hub_download(repo_id, "model_index.json")).read_text("utf-8"))
        return family_of_class(str(index.get("_class_name", ""))) or SDXL
    return family.family if family else SDXL


def load_hub(repo_id: str, cfg: DeviceConfig, *, local_files_only: bool,
             options: TextEncoderOptions | None = None) -> Any:
    """Load a pipeline by hub id through the usual Hugging Face cache.

    SDXL: on half-precision devices the ``fp16`` weight variant is tried first (half the
    download and disk), falling back to the default weights when a repo has none.
    FLUX.1/SD3.5 repos publish one set of weights (bf16), loaded as they are.
    """
    from diffusers import StableDiffusionXLPipeline

    family = hub_family(repo_id, local_files_only=local_files_only)
    if family != SDXL:
        return _load_pipeline(repo_id, family, cfg, options or TextEncoderOptions(), name=repo_id,
                              local_files_only=local_files_only)

    kwargs = dict(dtype=cfg.dtype, use_safetensors=True,
                  local_files_only=local_files_only, add_watermarker=False)
    with _as_unavailable(repo_id):
        if cfg.half:
            try:
                pipe = StableDiffusionXLPipeline.from_pretrained(repo_id, variant="fp16", **kwargs)
                return prepare_pipeline(pipe, cfg)
            except (OSError, ValueError) as exc:  # no fp16 variant in this repo
                log.info("%s: no usable fp16 variant (%s); loading default weights", repo_id, exc)
        pipe = StableDiffusionXLPipeline.from_pretrained(repo_id, **kwargs)
        return prepare_pipeline(pipe, cfg)


# --- tokenizers -------------------------------------------------------------------------


def resolve_tokenizers(checkpoint: Path, config_dir: Path) -> tuple[Any, Any]:
    """Find the two CLIP tokenizers for a single-file checkpoint (see :func:`load_single_file`)."""
    from transformers import CLIPTokenizer

    errors = []
    for folder in (config_dir, checkpoint.parent / (checkpoint.stem + TOKENIZERS_SUFFIX)):
        if (folder / "tokenizer").is_dir() and (folder / "tokenizer_2").is_dir():
            try:
                return (_checked(CLIPTokenizer.from_pretrained(folder / "tokenizer")),
                        _checked(CLIPTokenizer.from_pretrained(folder / "tokenizer_2")))
            except (OSError, ValueError) as exc:
                errors.append(f"{folder.name}: {exc}")
    for local_only in (True, False):
        if not local_only and _offline():
            errors.append("hub download skipped: HF_HUB_OFFLINE is set")
            break
        try:
            return tuple(_checked(CLIPTokenizer.from_pretrained(
                SDXL_BASE_REPO, subfolder=sub, local_files_only=local_only))
                for sub in ("tokenizer", "tokenizer_2"))
        except (OSError, ValueError) as exc:
            errors.append(f"{'cache' if local_only else 'hub'}: {exc}")
    raise ModelUnavailable(
        f"{checkpoint.name}: no CLIP tokenizers found. Put SDXL's 'tokenizer' and "
        f"'tokenizer_2' folders in {checkpoint.stem}{TOKENIZERS_SUFFIX}/ next to the "
        f"checkpoint, or cache {SDXL_BASE_REPO} once while online "
        f"({'; '.join(errors)[:300]})")


def _checked(tokenizer: Any) -> Any:
    """Reject the empty tokenizer transformers 5 returns when vocabulary files are missing.

    ``CLIPTokenizer.from_pretrained`` no longer raises for a folder or repo without
    ``vocab.json``; it builds a tokenizer of just the special tokens, which would
    silently turn every prompt into padding.
    """
    if len(tokenizer) < 258:  # a byte-level BPE vocabulary has at least 256 + 2 tokens
        raise ValueError("tokenizer files missing (vocab.json / merges.txt)")
    return tokenizer


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class _as_unavailable:
    """Context manager turning any loading failure into :class:`ModelUnavailable`.

    Loading can fail in many library-specific ways (OSError, ValueError, safetensors and
    size-mismatch RuntimeErrors, out of memory); callers only need one error type.
    """

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, PixelmillError) or not isinstance(exc, Exception):
            return False
        message = f"{type(exc).__name__}: {exc}".strip()
        raise ModelUnavailable(f"cannot load model {self.name!r}: {message[:500]}") from exc

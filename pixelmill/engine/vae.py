"""The VAE: which one, in which precision, and decoding latents to 8-bit pixels on the device.

**Which VAE** (:func:`choose_vae`): the ``--vae`` setting (a folder, a name in the models
directory's ``vae/``, or a hub id); unset, an fp16-safe VAE found in ``vae/`` (a folder
named like ``sdxl-vae-fp16-fix``); otherwise each model keeps its own.

**Which precision** (:func:`decode_dtype`): the stock SDXL VAE overflows in fp16 (NaN or
black images), so it decodes in fp32 unless the VAE is fp16-safe (then in the pipeline's
half type, no cast) or the device has bf16 (Ampere and newer: bf16 has fp32's range, so
the stock VAE is safe in it at half the memory and about twice fp32's speed). The VAE is
kept in that dtype for good, instead of being cast to fp32 and back on every call.

**Decoding** (:func:`decode_to_uint8`): SDXL pipelines are asked for latents, and pixelmill
decodes them: denormalise, decode (tiled and/or sliced above ``vae_tile_above_pixels``, see
:func:`memory_mode`), check for NaN/inf on the device, and convert to ``uint8`` there, so
one small ``uint8`` array crosses to the host instead of an fp32 array four times its size
(and numpy's float→uint8 pass on the CPU disappears from the engine thread).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelmill.core.errors import GenerationFailed, ModelUnavailable
from pixelmill.registry.models_dir import HUB_ID

log = logging.getLogger(__name__)

FP16_SAFE_NAME = re.compile(r"fp16[-_.]?(fix|safe)", re.IGNORECASE)
"""Folder or repository names of VAEs finetuned not to overflow in fp16."""


@dataclass(frozen=True)
class VaeChoice:
    """A VAE replacing the models' own: where it loads from and whether fp16 is safe."""

    source: str
    """A local folder or a hub id, as ``AutoencoderKL.from_pretrained`` takes it."""
    fp16_safe: bool
    origin: str
    """``setting`` (``--vae``) or ``models_dir`` (found in ``vae/``), for the log."""


def choose_vae(setting: str | None, models_dir: Path) -> VaeChoice | None:
    """The VAE to use for every SDXL model, or None for each model's own.

    Raises :class:`ModelUnavailable` when ``setting`` names nothing that exists.
    """
    vae_dir = Path(models_dir) / "vae"
    if setting:
        for folder in (Path(setting).expanduser(), vae_dir / setting):
            if (folder / "config.json").is_file():
                return VaeChoice(str(folder), _fp16_safe(folder), "setting")
        if HUB_ID.fullmatch(setting) and not Path(setting).exists():
            return VaeChoice(setting, bool(FP16_SAFE_NAME.search(setting)), "setting")
        raise ModelUnavailable(f"--vae {setting!r}: not a VAE folder (with config.json), a name in "
                               f"{vae_dir}, or a hub id")
    if vae_dir.is_dir():
        for folder in sorted(p for p in vae_dir.iterdir() if (p / "config.json").is_file()):
            if FP16_SAFE_NAME.search(folder.name):
                return VaeChoice(str(folder), True, "models_dir")
    return None


def _fp16_safe(folder: Path) -> bool:
    """fp16-safe by name, or by a config that says it needs no upcast (``force_upcast``
    false, as madebyollin's sdxl-vae-fp16-fix ships)."""
    if FP16_SAFE_NAME.search(folder.name):
        return True
    try:
        return json.loads((folder / "config.json").read_text()).get("force_upcast") is False
    except (OSError, ValueError):
        return False


def bf16_capable(capability: tuple[int, int] | None) -> bool:
    """Whether a CUDA device of compute ``capability`` has fast bf16 (Ampere, sm_80, on)."""
    return capability is not None and tuple(capability) >= (8, 0)


def decode_dtype(dtype: torch.dtype, *, fp16_safe: bool, bf16: bool) -> torch.dtype:
    """The dtype the VAE decodes in, for a pipeline running in ``dtype``.

    fp32 pipelines decode in fp32; an fp16-safe VAE decodes in the pipeline's half type;
    the stock VAE decodes in bf16 where the device has it (bf16 cannot overflow where
    fp32 does not), else upcast to fp32.
    """
    if dtype == torch.float32:
        return torch.float32
    if fp16_safe or dtype == torch.bfloat16:
        return dtype
    return torch.bfloat16 if bf16 else torch.float32


def memory_mode(width: int, height: int, images: int, budget_pixels: int, *,
                tiling: bool = False, slicing: bool = False) -> tuple[bool, bool]:
    """``(tiling, slicing)`` for decoding ``images`` images of ``width`` x ``height``.

    Tiles when one image has more than ``budget_pixels`` pixels, one image at a time when
    the batch together has; ``tiling``/``slicing`` (the ``--vae-tiling``/``--vae-slicing``
    settings) force them on at every size.
    """
    one = width * height
    return tiling or one > budget_pixels, slicing or (images > 1 and one * images > budget_pixels)


# --- applying the choice to a pipeline --------------------------------------------------------


def load_vae(choice: VaeChoice, dtype: torch.dtype) -> Any:
    """Load the chosen VAE (safetensors only) in ``dtype``."""
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(choice.source, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load the configured VAE {choice.source}: {exc}") from exc


def set_decode_dtype(vae: Any, dtype: torch.dtype, *, fp16_safe: bool) -> None:
    """Keep ``vae`` in ``dtype`` and tell diffusers' own paths whether to upcast.

    ``force_upcast`` stays set unless fp16 is safe: img2img and inpaint pipelines encode
    their input image with the VAE themselves and upcast to fp32 for that when it is set.
    """
    if fp16_safe and vae.config.force_upcast:
        vae.register_to_config(force_upcast=False)
    elif not fp16_safe and dtype != torch.float32 and not vae.config.force_upcast:
        vae.register_to_config(force_upcast=True)
    if vae.dtype != dtype:
        vae.to(dtype=dtype)


def compile_decoder(vae: Any, *, mode: str, backend: str | None = None) -> None:
    """``torch.compile`` the VAE decoder (tiles and whole images alike go through it)."""
    if backend is not None:
        vae.decoder.compile(backend=backend, fullgraph=False)
    else:
        vae.decoder.compile(mode=mode, fullgraph=False, dynamic=False)


def decodes_latents(pipe: Any) -> bool:
    """Whether pixelmill decodes this pipeline's latents itself (the SDXL family with an
    ``AutoencoderKL``); other families keep their pipeline's own decoding."""
    from diffusers import AutoencoderKL

    return (type(pipe).__name__.startswith("StableDiffusionXL")
            and isinstance(getattr(pipe, "vae", None), AutoencoderKL))


@torch.no_grad()
def decode_to_uint8(pipe: Any, latents: torch.Tensor, *, dtype: torch.dtype, budget_pixels: int,
                    tiling: bool = False, slicing: bool = False) -> np.ndarray:
    """Decode SDXL ``latents`` to an ``(N, H, W, 3)`` ``uint8`` array, converted on the device.

    Raises :class:`GenerationFailed` when the decoded pixels hold NaN/inf (numeric overflow).
    """
    vae = pipe.vae
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    count, _, h, w = latents.shape
    use_tiling, use_slicing = memory_mode(w * scale, h * scale, count, budget_pixels,
                                          tiling=tiling, slicing=slicing)
    vae.enable_tiling() if use_tiling else vae.disable_tiling()
    vae.enable_slicing() if use_slicing else vae.disable_slicing()
    if vae.dtype != dtype:  # an img2img/inpaint encode upcast it and cast it back
        vae.to(dtype=dtype)
    latents = latents.to(device=vae.device, dtype=dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean, device=latents.device, dtype=dtype).view(1, -1, 1, 1)
        std = torch.tensor(std, device=latents.device, dtype=dtype).view(1, -1, 1, 1)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    image = vae.decode(latents, return_dict=False)[0]
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    if not bool(torch.isfinite(image).all()):  # one sync, and the .cpu() below syncs anyway
        raise GenerationFailed("the decoded image contains NaN/inf values (numeric overflow; "
                               "an fp16-fix VAE or bf16 may be needed)")
    pixels = ((image.float() / 2 + 0.5).clamp_(0, 1) * 255).round_().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def to_uint8(images: Any) -> np.ndarray:
    """A pipeline's ``np`` output (floats in [0, 1]) or an already ``uint8`` array, as ``uint8``."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        return array
    if not np.isfinite(array).all():
        raise GenerationFailed("the image contains NaN/inf values (numeric overflow; "
                               "an fp16-fix VAE or fp32 may be needed)")
    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


# --- the engine's hooks -----------------------------------------------------------------------


def output_type(pipe: Any) -> str:
    """What to ask ``pipe`` for: latents where pixelmill decodes them, else float arrays."""
    return "latent" if decodes_latents(pipe) else "np"


def decode(pipe: Any, latents: torch.Tensor, cfg: Any) -> np.ndarray:
    """:func:`decode_to_uint8` with a :class:`~pixelmill.engine.device.DeviceConfig`'s choices."""
    return decode_to_uint8(pipe, latents, dtype=cfg.vae_dtype, budget_pixels=cfg.vae_tile_above_pixels,
                           tiling=cfg.vae_tiling, slicing=cfg.vae_slicing)


def pixels(pipe: Any, images: Any, cfg: Any) -> np.ndarray:
    """A pipeline call's output as ``(N, H, W, 3)`` ``uint8``: latents decoded on the device,
    float arrays (pipelines that decode themselves, the refiner) converted."""
    if isinstance(images, torch.Tensor) and decodes_latents(pipe):
        return decode(pipe, images, cfg)
    return to_uint8(images)


def to_pil(arrays: np.ndarray) -> list:
    """``uint8`` RGB arrays as PIL images (no copy beyond PIL's own)."""
    from PIL import Image

    return [Image.fromarray(array) for array in arrays]


class pipeline_decodes:  # noqa: N801 - used as a context manager, reads as a phrase
    """While a pipeline decodes by itself (the refiner): the VAE in the pipeline's dtype,
    with diffusers' own fp32 upcast; afterwards back in its resting decode dtype."""

    def __init__(self, vae: Any, cfg: Any):
        self._vae, self._cfg = vae, cfg

    def __enter__(self) -> None:
        if self._vae.dtype != self._cfg.dtype:
            self._vae.to(dtype=self._cfg.dtype)

    def __exit__(self, *exc) -> None:
        if self._vae.dtype != self._cfg.vae_dtype:
            self._vae.to(dtype=self._cfg.vae_dtype)

"""The engine's side of model families: pipeline classes, T5 memory options, per-family call kwargs.

The family of a loaded pipeline is read from its class and transformer config (the same
rules :mod:`pixelmill.registry.families` applies to files). Everything that differs per
family in a pipeline call lives here, so :mod:`pixelmill.engine.generation` stays one path:

* SDXL: compel prompt embeddings, negative prompt, CFG, ``clip_skip``, refiner, ControlNet;
* FLUX.1: plain prompts (CLIP pooled + T5 sequence), ``guidance_scale`` feeds dev's guidance
  embedding (schnell has none), no negative prompt, flow-matching scheduler only; ControlNet
  (``FluxControlNetModel``) for txt2img, img2img and inpaint;
* SD 3.5: plain prompts for its three encoders, negative prompt, CFG, ``clip_skip``; ControlNet
  (``SD3ControlNetModel``) for txt2img only (diffusers has no SD3 img2img ControlNet pipeline).

T5 memory options (FLUX.1 and SD3.5 only; :class:`TextEncoderOptions` from the settings):
``precision`` (T5 overflows in fp16, so CUDA defaults to bf16) and ``quantization``
(bitsandbytes 8-bit or 4-bit NF4 through transformers' ``BitsAndBytesConfig``; CUDA and the
``pixelmill[quantization]`` extra needed, refused with an error naming the setting otherwise).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pixelmill.core.errors import ModelUnavailable
from pixelmill.core.families import FLUX, SD3, SDXL, ModelFamily, family_for
from pixelmill.core.types import Mode
from pixelmill.registry.families import family_of_class

T5_COMPONENT = {FLUX: "text_encoder_2", SD3: "text_encoder_3"}
_CLASSES = {
    SDXL: ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    FLUX: ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    SD3: ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
}
_MODES = (Mode.txt2img, Mode.img2img, Mode.inpaint)
# ControlNet pipelines where diffusers has them (None: it has none; the policy refuses that mode)
# and the ControlNet model classes, single and multi, per family.
_CONTROL_CLASSES = {
    SDXL: ("StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
           "StableDiffusionXLControlNetInpaintPipeline"),
    FLUX: ("FluxControlNetPipeline", "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline"),
    SD3: ("StableDiffusion3ControlNetPipeline", None, None),  # SD3's inpaint ControlNet is a model of its own
}
CONTROLNET_MODELS = {SDXL: ("ControlNetModel", "MultiControlNetModel"),
                     FLUX: ("FluxControlNetModel", "FluxMultiControlNetModel"),
                     SD3: ("SD3ControlNetModel", "SD3MultiControlNetModel")}


@dataclass(frozen=True)
class TextEncoderOptions:
    """The T5 text encoder's dtype and quantization (settings ``text_encoder_precision`` and
    ``text_encoder_quantization``)."""

    precision: str = "auto"
    quantization: str = "none"


def pipeline_class(family: str, mode: Mode = Mode.txt2img) -> Any:
    """The diffusers pipeline class for ``family`` and ``mode``."""
    import diffusers

    return getattr(diffusers, _CLASSES[family][_MODES.index(Mode(mode))])


def controlnet_pipeline_class(family: str, mode: Mode) -> Any:
    """The diffusers ControlNet pipeline class for ``family`` and ``mode``."""
    import diffusers

    name = _CONTROL_CLASSES[family][_MODES.index(Mode(mode))]
    if name is None:
        raise ModelUnavailable(f"diffusers has no {family} ControlNet pipeline for {Mode(mode).value}",
                               param="controlnets")
    return getattr(diffusers, name)


def controlnet_family(class_name: str) -> str | None:
    """The family a ControlNet model class (its config's ``_class_name``) belongs to."""
    return next((family for family, (single, _) in CONTROLNET_MODELS.items() if single == class_name), None)


def control_image_kwarg(family: str, mode: Mode) -> str:
    """The call kwarg that takes the control image: SDXL's txt2img pipeline calls it ``image``
    (its img2img/inpaint ones use ``image`` for the init image); FLUX and SD3 ``control_image``."""
    return "image" if family == SDXL and Mode(mode) is Mode.txt2img else "control_image"


@contextlib.contextmanager
def seeded_global_rng(family: str, controlnet: bool, seed: int) -> Iterator[None]:
    """Seed torch's global RNG for the call (and restore it after) where diffusers draws from it.

    diffusers' SD3 ControlNet pipeline samples the control image's VAE latents without the
    request's generator; seeding the global RNG from the request's first seed keeps "same
    seed, same image" (on CUDA its CUDA RNG too). Every other call is left alone."""
    if family != SD3 or not controlnet:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def denoiser_config(pipe: Any) -> Any:
    """The config of the model a ControlNet feeds: SDXL's UNet, FLUX/SD3's transformer."""
    unet = getattr(pipe, "unet", None)
    return (unet if unet is not None else pipe.transformer).config


def family_of_pipeline(pipe: Any) -> ModelFamily:
    """The family (and variant) of a loaded pipeline, from its class and transformer config."""
    family = family_of_class(type(pipe).__name__) or SDXL
    config = getattr(getattr(pipe, "transformer", None), "config", {}) or {}
    variant = None
    if family == FLUX and "guidance_embeds" in config:
        variant = "dev" if config["guidance_embeds"] else "schnell"
    elif family == SD3 and "num_layers" in config:
        variant = "medium" if config["num_layers"] <= 24 else "large"
    return family_for(family, variant)


def native_size(pipe: Any, family: str) -> tuple[int, int]:
    """``(width, height)`` a model was trained at.

    SDXL: UNet sample size x VAE scale; SD3: transformer sample size x VAE scale; FLUX.1
    has no size in its transformer config: its VAE's ``sample_size`` (1024 for FLUX.1).
    """
    scale = pipe.vae_scale_factor
    if family == SDXL:
        sample = pipe.unet.config.sample_size
    elif family == SD3:
        sample = pipe.transformer.config.sample_size
    else:
        return (int(pipe.vae.config.sample_size),) * 2
    height, width = (sample, sample) if isinstance(sample, int) else tuple(sample)
    return width * scale, height * scale


def t5_dtype(cfg: Any, options: TextEncoderOptions) -> torch.dtype:
    """The T5 encoder's dtype: fp32 on CPU (as everything), the chosen one on CUDA (auto: bf16)."""
    if not cfg.is_cuda:
        return cfg.dtype
    return {"fp32": torch.float32, "fp16": torch.float16}.get(options.precision, torch.bfloat16)


def quantized_text_encoder(family: str, location: str, cfg: Any, options: TextEncoderOptions, *,
                           local_files_only: bool) -> dict[str, Any]:
    """``{component: quantized T5}`` to pass to ``from_pretrained``, or ``{}`` when not asked for."""
    if options.quantization == "none" or family not in T5_COMPONENT:
        return {}
    setting = f"text_encoder_quantization={options.quantization}"
    if not cfg.is_cuda:
        raise ModelUnavailable(f"{setting} needs a CUDA GPU (bitsandbytes); this server runs on {cfg.device}",
                               param="text_encoder_quantization")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelUnavailable(f"{setting} needs the bitsandbytes package: pip install 'pixelmill[quantization]'",
                               param="text_encoder_quantization")
    from transformers import BitsAndBytesConfig, T5EncoderModel

    dtype = t5_dtype(cfg, options)
    if options.quantization == "8bit":
        quant = BitsAndBytesConfig(load_in_8bit=True)
    else:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    component = T5_COMPONENT[family]
    encoder = T5EncoderModel.from_pretrained(location, subfolder=component, quantization_config=quant, use_safetensors=True,
                                             dtype=dtype, local_files_only=local_files_only)
    return {component: encoder}


def apply_text_encoder_dtype(pipe: Any, family: str, cfg: Any, options: TextEncoderOptions) -> None:
    """Cast the T5 encoder to its own dtype (after the pipeline-wide cast); quantized ones stay."""
    encoder = getattr(pipe, T5_COMPONENT.get(family, ""), None)
    if encoder is None or getattr(encoder, "is_quantized", False) or options.quantization != "none":
        return
    dtype = t5_dtype(cfg, options)
    if encoder.dtype != dtype:
        encoder.to(dtype=dtype)


def call_kwargs(family: ModelFamily, *, prompts: list[str], negatives: list[str] | None, guidance: float,
                clip_skip: int | None) -> dict[str, Any]:
    """Prompt and guidance kwargs of a FLUX/SD3 pipeline call (SDXL's come from compel).

    Prompt weighting syntax is not parsed for these families: the text goes to the
    encoders as written (their T5 reads far past CLIP's 77 tokens).
    """
    kwargs: dict[str, Any] = {"prompt": prompts, "guidance_scale": guidance}
    if family.family == SD3:
        kwargs["negative_prompt"] = negatives
        kwargs["clip_skip"] = clip_skip
    return kwargs

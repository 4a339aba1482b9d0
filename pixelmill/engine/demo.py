"""Random-weight demo models with the real SDXL architecture, written without downloads.

``write_demo_models(models_dir)`` produces the same folder layout a user's models
directory has::

    checkpoints/demo/              diffusers folder of a StableDiffusionXLPipeline
    checkpoints/demo-refiner/      SDXL refiner (StableDiffusionXLImg2ImgPipeline folder)
    loras/demo-style.safetensors   LoRA on the UNet attention and both text encoders
    controlnets/demo-canny/        ControlNetModel matching the demo UNet

Everything is tiny but structurally SDXL: two CLIP text encoders whose penultimate
hidden sizes add up to the UNet's ``cross_attention_dim``, a UNet with
``addition_embed_type="text_time"``, a 4-block VAE that downsamples 8x and a locally
written byte-level BPE tokenizer. Images are noise, but every parameter's effect is
testable through the real ``from_pretrained`` / ``load_lora_weights`` paths.

The refiner is structurally an SDXL refiner: no first text encoder, a UNet that
cross-attends to the second encoder's states only and is micro-conditioned on an
aesthetic score instead of the target size. Its ``text_encoder_2``, ``tokenizer_2`` and
``vae`` are the base's, saved with identical weights, as with the real SDXL 1.0 pair --
so loading it while sharing the base's copies changes nothing.

Output is deterministic: all random initialisation runs under fixed seeds inside
``torch.random.fork_rng`` (so the caller's global RNG is untouched), and nothing
time-dependent is written, so the same pixelmill/diffusers versions give the same bytes.

Writing is atomic (see :func:`write_demo_models`): the server's fallback folder
(``<data dir>/demo-models``) carries a manifest, and a folder whose manifest is missing or
does not match its files is written again instead of being reused
(:mod:`pixelmill.registry.manifest`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pixelmill.engine.demo_flux import write_family_demos
from pixelmill.engine.demo_tokenizer import build_tokenizer, write_tokenizer_files
from pixelmill.engine.demo_tokenizer import vocab as tokenizer_vocab
from pixelmill.registry.manifest import (DEMO_MODELS_KIND, MANIFEST_NAME, complete_details, publish, staging_folder,
                                         write_manifest)

DEMO_MODEL_NAME = "demo"
DEMO_LORA_NAME = "demo-style"
DEMO_CONTROLNET_NAME = "demo-canny"
DEMO_REFINER_NAME = "demo-refiner"
_SEED = 20240917  # arbitrary but fixed: the demo must be byte-identical between runs


@dataclass(frozen=True)
class DemoSize:
    """Widths and depths of one demo model flavour (everything else is SDXL's)."""

    unet_channels: tuple[int, int, int]
    unet_heads: tuple[int, int, int]
    unet_transformer_layers: tuple[int, int, int]
    unet_layers_per_block: int
    sample_size: int  # latent size; native image size = 8 * sample_size
    te1_hidden: int
    te2_hidden: int
    te_layers: int
    te_heads: int
    projection_dim: int
    time_embed_dim: int
    vae_channels: tuple[int, int, int, int]
    norm_groups: int
    lora_rank: int = 4


SIZES: dict[str, DemoSize] = {
    # 128x128 native, a 2-step txt2img runs in well under a second on CPU.
    "tiny": DemoSize(
        unet_channels=(16, 32, 32), unet_heads=(1, 2, 2), unet_transformer_layers=(1, 1, 1),
        unet_layers_per_block=1, sample_size=16, te1_hidden=16, te2_hidden=32, te_layers=3,
        te_heads=2, projection_dim=16, time_embed_dim=8, vae_channels=(8, 8, 16, 16),
        norm_groups=8,
    ),
    # 256x256 native, tuned so 20 steps take about a second on 2 CPU cores.
    "bench": DemoSize(
        unet_channels=(32, 64, 128), unet_heads=(1, 2, 4), unet_transformer_layers=(1, 1, 2),
        unet_layers_per_block=2, sample_size=32, te1_hidden=64, te2_hidden=128, te_layers=4,
        te_heads=4, projection_dim=64, time_embed_dim=32, vae_channels=(16, 32, 64, 64),
        norm_groups=16,
    ),
}

# SDXL base 1.0's noise schedule (facts from its scheduler_config.json).
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


# Moved into a shared models directory in this order: the checkpoint last, so a reader that
# finds checkpoints/demo/model_index.json also finds the refiner, LoRA and ControlNet.
_ITEMS = (f"controlnets/{DEMO_CONTROLNET_NAME}", f"loras/{DEMO_LORA_NAME}.safetensors",
          f"checkpoints/{DEMO_REFINER_NAME}", f"checkpoints/{DEMO_MODEL_NAME}")


def write_demo_models(models_dir: Path, size: Literal["tiny", "bench"] = "tiny",
                      families: tuple[str, ...] = ("sdxl",)) -> None:
    """Write the demo checkpoint, refiner, LoRA and ControlNet under ``models_dir``; with
    ``"flux"``/``"sd3"`` in ``families`` also the FLUX.1 / SD3.5 demos (engine/demo_flux.py, demo_sd3.py).

    Never leaves a half-written model where a reader could take it for a whole one:
    everything is built in a temporary folder next to ``models_dir`` first. A folder of
    its own (absent, empty, or an earlier demo folder: the server's ``<data dir>/demo-
    models``) gets a manifest and is renamed into place in one step. Into a shared models
    directory each model is renamed into place, replacing an earlier demo output, and
    other files there are left alone.
    """
    target = Path(models_dir)
    staged = staging_folder(target)
    try:
        items = _write_all(staged, SIZES[size], size, families)
        # A manifest marks a folder this function wrote whole: it is replaced whole again.
        own_folder = not target.exists() or not any(target.iterdir()) or (target / MANIFEST_NAME).exists()
        if own_folder:
            write_manifest(staged, kind=DEMO_MODELS_KIND, details={"size": size, "families": list(families)})
            publish(staged, target)
            return
        for item in items:
            (target / item).parent.mkdir(parents=True, exist_ok=True)
            publish(staged / item, target / item)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already when published whole


def demo_models_present(models_dir: Path, size: str, families: tuple[str, ...]) -> bool:
    """Whether ``models_dir`` is a complete demo folder (its manifest checked) of ``size``
    holding at least ``families``: written by :func:`write_demo_models` into a folder of
    its own, so writing again would give the same bytes."""
    details = complete_details(Path(models_dir), kind=DEMO_MODELS_KIND)
    return details is not None and details.get("size") == size and set(families) <= set(details.get("families", ()))


def _write_all(models_dir: Path, spec: DemoSize, size: str, families: tuple[str, ...]) -> list[str]:
    """Write every demo model into the (new, empty) folder ``models_dir``; the items written."""
    with _quiet_libraries():
        items = write_family_demos(models_dir, size, families)  # FLUX.1, SD3.5: demo_flux.py, demo_sd3.py
    if "sdxl" not in families:
        return items
    with _quiet_libraries(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        pipe = build_demo_pipeline(spec)
        _save_dir(models_dir / "checkpoints" / DEMO_MODEL_NAME, pipe.save_pretrained)
        _write_controlnet(pipe.unet, spec, models_dir / "controlnets" / DEMO_CONTROLNET_NAME)
        _write_refiner(pipe, spec, models_dir / "checkpoints" / DEMO_REFINER_NAME)
        # Last, because adding adapters mutates the in-memory components.
        _write_lora(pipe, spec, models_dir / "loras")
    return [*items, *_ITEMS]


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence the libraries' chatter while the demo is written, then restore their settings.

    Writing random weights says nothing a user can act on, yet transformers warns that
    ``CLIPImageProcessor`` requires torchvision (the demo never processes images) and
    every ``save_pretrained`` draws a "Writing model shards" progress bar.
    """
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
             for lib in (transformers_logging, diffusers_logging)]
    hub_bars_on = not hub_utils.are_progress_bars_disabled()
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        for lib, verbosity, bars_on in saved:
            lib.set_verbosity(verbosity)
            if bars_on:
                lib.enable_progress_bar()
        if hub_bars_on:
            hub_utils.enable_progress_bars()


def build_demo_pipeline(spec: DemoSize):
    """Build an in-memory ``StableDiffusionXLPipeline`` with random weights for ``spec``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    te1, te2 = _text_encoders(spec)
    return StableDiffusionXLPipeline(
        vae=_vae(spec),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        tokenizer_2=build_tokenizer(pad_token="!"),
        unet=_unet(spec),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        add_watermarker=False,  # the watermark package is optional and slow; SDXL's own
    )


def _unet(spec: DemoSize, *, refiner: bool = False):
    """The SDXL base UNet, or (``refiner=True``) the refiner's conditioning on the same layout.

    The refiner cross-attends to the second text encoder only and embeds 5 micro-
    conditioning numbers (original size, crop, aesthetic score) instead of 6. The real
    refiner is also wider and one level deeper; that does not matter for the hand-off.
    """
    from diffusers import UNet2DConditionModel

    context_dim = spec.te2_hidden if refiner else spec.te1_hidden + spec.te2_hidden
    time_ids = 5 if refiner else 6
    return UNet2DConditionModel(
        sample_size=spec.sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=spec.unet_channels,
        layers_per_block=spec.unet_layers_per_block,
        # diffusers' SDXL config names the head *count* attention_head_dim; keep that quirk.
        attention_head_dim=spec.unet_heads,
        transformer_layers_per_block=spec.unet_transformer_layers,
        norm_num_groups=spec.norm_groups,
        # SDXL cross-attends to the concatenated penultimate states of both encoders.
        cross_attention_dim=context_dim,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=spec.time_embed_dim,
        # pooled text embeds (projection_dim) + 6 (refiner: 5) micro-conditioning numbers
        projection_class_embeddings_input_dim=spec.projection_dim + time_ids * spec.time_embed_dim,
    )


def _vae(spec: DemoSize):
    from diffusers import AutoencoderKL

    # 4 blocks => 3 downsamples => 8x, like the real SDXL VAE.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=spec.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=spec.norm_groups // 2,
        sample_size=spec.sample_size * 8,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def _text_encoders(spec: DemoSize):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = tokenizer_vocab()
    common = dict(
        vocab_size=len(vocab),
        num_hidden_layers=spec.te_layers,
        num_attention_heads=spec.te_heads,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=1,
        projection_dim=spec.projection_dim,
    )
    te1 = CLIPTextModel(CLIPTextConfig(
        hidden_size=spec.te1_hidden, intermediate_size=4 * spec.te1_hidden,
        hidden_act="quick_gelu", **common))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=spec.te2_hidden, intermediate_size=4 * spec.te2_hidden,
        hidden_act="gelu", **common))
    return te1.eval(), te2.eval()


# --- saving ------------------------------------------------------------------------------


def _save_dir(target: Path, save) -> None:
    """Replace ``target`` with a fresh ``save_pretrained`` output."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    save(target, safe_serialization=True)
    if (target / "model_index.json").exists():
        for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
            if (target / sub).is_dir():  # a refiner has no first tokenizer
                shutil.rmtree(target / sub)
                write_tokenizer_files(target / sub, pad)


def _small_random_(tensor: torch.Tensor, gen: torch.Generator, std: float) -> None:
    with torch.no_grad():
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)


def _write_controlnet(unet, spec: DemoSize, target: Path) -> None:
    """A ControlNet copied from the UNet, with its zero-convs re-initialised small.

    A freshly made ControlNet adds exactly zero to the UNet; random zero-convs make
    ``controlnet_conditioning_scale`` observable in tests.
    """
    from diffusers import ControlNetModel

    c = spec.unet_channels[0]
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(c // 2, c // 2, c, c))
    gen = torch.Generator().manual_seed(_SEED + 1)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    for conv in zero_convs:
        _small_random_(conv.weight, gen, std=0.05)
        _small_random_(conv.bias, gen, std=0.01)
    _save_dir(target, controlnet.save_pretrained)


def _write_refiner(base, spec: DemoSize, target: Path) -> None:
    """Save an SDXL refiner folder: a fresh refiner UNet plus the base's TE2, tokenizer and VAE.

    Built under its own seed inside a forked RNG so the files written after it (the
    LoRA draws from the global RNG) are the same with or without the refiner.
    """
    from diffusers import EulerDiscreteScheduler

    from pixelmill.engine.refiner import refiner_pipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED + 3)
        unet = _unet(spec, refiner=True)
    refiner = refiner_pipeline(base, unet, EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG))
    _save_dir(target, refiner.save_pretrained)


def _write_lora(pipe, spec: DemoSize, loras_dir: Path) -> None:
    """Save a LoRA over the UNet attention projections and both text encoders."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    rank = spec.lora_rank
    unet_cfg = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                          target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    text_cfg = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                          target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    gen = torch.Generator().manual_seed(_SEED + 2)
    layers = {}
    for name, model, cfg in (("unet", pipe.unet, unet_cfg),
                             ("text_encoder", pipe.text_encoder, text_cfg),
                             ("text_encoder_2", pipe.text_encoder_2, text_cfg)):
        model.add_adapter(cfg)
        # peft zero-initialises lora_B, which would make the LoRA a no-op.
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                _small_random_(param, gen, std=0.5 / param.shape[1] ** 0.5)
        layers[name] = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
    loras_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(
        loras_dir,
        unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers["text_encoder"],
        text_encoder_2_lora_layers=layers["text_encoder_2"],
        weight_name=f"{DEMO_LORA_NAME}.safetensors",
    )

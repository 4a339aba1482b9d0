"""A random-weight Stable Diffusion 3.5 demo model, written without downloads.

``write_sd3_demo(models_dir, size)`` adds to a models directory::

    checkpoints/demo-sd3/              StableDiffusion3Pipeline folder (3.5-medium-like)
    loras/demo-sd3-style.safetensors   diffusers-format LoRA on the transformer's attention

Structurally SD 3.5 medium: an ``SD3Transformer2DModel`` (MMDiT with a dual-attention
first block and RMS query/key norm), two CLIP text encoders with projection heads (their
pooled outputs concatenated; their hidden states concatenated and padded to the T5 width),
a T5 encoder, a 16-channel 8x AutoencoderKL without quant convs and a
``FlowMatchEulerDiscreteScheduler`` with shift 3. Shared building blocks live in
:mod:`pixelmill.engine.demo_flux`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pixelmill.engine.demo_flux import (SIZES, FamilyDemoSize, clip_encoder, save_family_folder, t5_encoder,
                                        vae16, write_transformer_controlnet, write_transformer_lora)
from pixelmill.engine.demo_tokenizer import build_t5_tokenizer, build_tokenizer

SD3_NAME = "demo-sd3"
SD3_LORA_NAME = "demo-sd3-style"
SD3_CONTROLNET_NAME = "demo-sd3-controlnet"
_SEED = 20250302
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}  # SD 3.5's scheduler_config.json


def build_sd3_pipeline(spec: FamilyDemoSize):
    """An in-memory ``StableDiffusion3Pipeline`` with random weights for ``spec``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip_hidden = spec.clip_hidden // 2  # the two CLIPs' states side by side fill the T5 width
    transformer = SD3Transformer2DModel(
        sample_size=spec.sample_size, patch_size=2, in_channels=16, out_channels=16, num_layers=spec.layers + 1,
        attention_head_dim=spec.head_dim, num_attention_heads=spec.heads, joint_attention_dim=spec.t5_dim,
        caption_projection_dim=spec.head_dim * spec.heads, pooled_projection_dim=2 * clip_hidden,
        pos_embed_max_size=4 * spec.sample_size, dual_attention_layers=(0,), qk_norm="rms_norm")
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        vae=vae16(spec, shift=0.0609, scale=1.5305),  # SD3's VAE constants
        text_encoder=clip_encoder(clip_hidden, projection=clip_hidden),
        tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        text_encoder_2=clip_encoder(clip_hidden, projection=clip_hidden),
        tokenizer_2=build_tokenizer(pad_token="!"),
        text_encoder_3=t5_encoder(spec.t5_dim), tokenizer_3=build_t5_tokenizer(256))


def write_sd3_demo(models_dir: Path, size: str = "tiny") -> list[str]:
    """Write the SD3.5 demo and its LoRA; returns the items written, checkpoint last."""
    from diffusers import StableDiffusion3Pipeline

    spec = SIZES[size]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        pipe = build_sd3_pipeline(spec)
        save_family_folder(pipe, models_dir / "checkpoints" / SD3_NAME,
                           clip_folders={"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}, t5_folder="tokenizer_3")
        write_transformer_controlnet(_sd3_controlnet(pipe.transformer),
                                     models_dir / "controlnets" / SD3_CONTROLNET_NAME, seed=_SEED + 9)
        write_transformer_lora(pipe, StableDiffusion3Pipeline, SD3_LORA_NAME, models_dir / "loras",
                               rank=spec.lora_rank, seed=_SEED + 7)
    return [f"loras/{SD3_LORA_NAME}.safetensors", f"controlnets/{SD3_CONTROLNET_NAME}", f"checkpoints/{SD3_NAME}"]


def _sd3_controlnet(transformer):
    """An ``SD3ControlNetModel`` of one block with the transformer's widths (diffusers'
    ``from_transformer`` writes into the transformer's frozen config, so it is built here)."""
    from diffusers import SD3ControlNetModel

    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    config |= {"num_layers": 1, "extra_conditioning_channels": 0}
    controlnet = SD3ControlNetModel.from_config(config)
    controlnet.pos_embed.load_state_dict(transformer.pos_embed.state_dict())
    controlnet.time_text_embed.load_state_dict(transformer.time_text_embed.state_dict())
    controlnet.context_embedder.load_state_dict(transformer.context_embedder.state_dict())
    controlnet.transformer_blocks.load_state_dict(transformer.transformer_blocks.state_dict(), strict=False)
    torch.nn.init.zeros_(controlnet.pos_embed_input.proj.weight)  # as from_transformer: random in the writer
    torch.nn.init.zeros_(controlnet.pos_embed_input.proj.bias)
    return controlnet

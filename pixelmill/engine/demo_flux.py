"""Random-weight FLUX.1 demo models (dev and schnell), written without downloads.

``write_flux_demos(models_dir, size)`` adds to a models directory::

    checkpoints/demo-flux/               FluxPipeline folder, FLUX.1-dev-like (guidance embedding)
    checkpoints/demo-flux-schnell/       FluxPipeline folder, FLUX.1-schnell-like (no guidance embedding)
    loras/demo-flux-style.safetensors    diffusers-format LoRA on the transformer's attention
    controlnets/demo-flux-controlnet/    FluxControlNetModel (1 double + 1 single block) of the dev demo

Structurally FLUX.1: a ``FluxTransformer2DModel`` (double- and single-stream blocks, packed
2x2 latents so ``in_channels`` is 4 x 16), a CLIP text encoder giving the pooled vector, a
T5 encoder giving the sequence, a 16-channel AutoencoderKL downsampling 8x without
quant convs, and a ``FlowMatchEulerDiscreteScheduler`` with FLUX's shift settings. The
tokenizers are written locally (:mod:`pixelmill.engine.demo_tokenizer`). Dev and schnell
differ as the real ones do: ``guidance_embeds`` in the transformer config (that is how
:mod:`pixelmill.registry.families` tells them apart) and the scheduler's dynamic shifting.

The helpers here (T5 and CLIP encoders, the 16-channel VAE, saving with hand-written
tokenizers, the transformer LoRA) are shared with :mod:`pixelmill.engine.demo_sd3`.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from pixelmill.engine.demo_tokenizer import build_t5_tokenizer, build_tokenizer, write_t5_tokenizer
from pixelmill.engine.demo_tokenizer import vocab as clip_vocab
from pixelmill.engine.demo_tokenizer import write_tokenizer_files

FLUX_DEV_NAME = "demo-flux"
FLUX_SCHNELL_NAME = "demo-flux-schnell"
FLUX_LORA_NAME = "demo-flux-style"
FLUX_CONTROLNET_NAME = "demo-flux-controlnet"
_SEED = 20250301


@dataclass(frozen=True)
class FamilyDemoSize:
    """Widths of a FLUX/SD3 demo: every native size is ``8 * sample_size`` pixels."""

    sample_size: int
    layers: int
    heads: int
    head_dim: int
    clip_hidden: int
    t5_dim: int
    vae_channels: tuple[int, int, int, int]
    lora_rank: int = 4


SIZES = {
    # 128 px native; a 2-step image takes well under a second on one CPU core.
    "tiny": FamilyDemoSize(sample_size=16, layers=1, heads=2, head_dim=16, clip_hidden=32, t5_dim=32,
                           vae_channels=(8, 8, 16, 16)),
    # 256 px native, for bench/families.py.
    "bench": FamilyDemoSize(sample_size=32, layers=2, heads=4, head_dim=32, clip_hidden=64, t5_dim=64,
                            vae_channels=(16, 32, 64, 64)),
}

# FLUX.1's scheduler_config.json values (dev: dynamic shifting; schnell: fixed shift 1).
FLUX_DEV_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
                      "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
                      "use_dynamic_shifting": True}
FLUX_SCHNELL_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
                          "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 1.0,
                          "use_dynamic_shifting": False}


# --- shared parts ------------------------------------------------------------------------


def clip_encoder(hidden: int, *, projection: int | None = None, layers: int = 2):
    """A CLIP text encoder over the demo vocabulary (with a projection head if ``projection``)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = clip_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=1, projection_dim=projection or hidden,
        hidden_act="quick_gelu")
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval()


def t5_encoder(d_model: int, layers: int = 2):
    """A T5 v1.1-style encoder (gated GELU) over the demo T5 vocabulary."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(build_t5_tokenizer()), d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
                      num_layers=layers, num_heads=4, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def vae16(spec: FamilyDemoSize, *, shift: float, scale: float):
    """A 16-channel AutoencoderKL downsampling 8x, without quant convs (as FLUX's and SD3's)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=8 * spec.sample_size,
        shift_factor=shift, scaling_factor=scale, use_quant_conv=False, use_post_quant_conv=False).eval()


def save_family_folder(pipe, target: Path, *, clip_folders: dict[str, str], t5_folder: str) -> None:
    """``save_pretrained`` into a fresh ``target``, then write the tokenizers by hand
    (bytes that depend only on this code; ``clip_folders`` maps folder -> pad token)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    pipe.save_pretrained(target, safe_serialization=True)
    for sub, pad in clip_folders.items():
        shutil.rmtree(target / sub, ignore_errors=True)
        write_tokenizer_files(target / sub, pad)
    shutil.rmtree(target / t5_folder, ignore_errors=True)
    write_t5_tokenizer(target / t5_folder)


def write_transformer_lora(pipe, pipeline_cls, name: str, loras_dir: Path, *, rank: int, seed: int) -> None:
    """A diffusers-format (peft) LoRA on the transformer's attention projections, saved with
    ``pipeline_cls.save_lora_weights`` as trainers do; ``lora_B`` is random so it has an effect."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = pipe.transformer
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in transformer.named_parameters():
            if "lora_B" in param_name:
                param.copy_(torch.randn(param.shape, generator=gen) * (0.5 / param.shape[1] ** 0.5))
    layers = get_peft_model_state_dict(transformer)
    loras_dir.mkdir(parents=True, exist_ok=True)
    pipeline_cls.save_lora_weights(loras_dir, transformer_lora_layers=layers,
                                   weight_name=f"{name}.safetensors")
    transformer.delete_adapters(transformer.active_adapters())


# --- FLUX ----------------------------------------------------------------------------------


def build_flux_pipeline(spec: FamilyDemoSize, *, schnell: bool):
    """An in-memory ``FluxPipeline`` with random weights (schnell: no guidance embedding)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    rope = spec.head_dim // 4
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=spec.layers, num_single_layers=spec.layers,
        attention_head_dim=spec.head_dim, num_attention_heads=spec.heads, joint_attention_dim=spec.t5_dim,
        pooled_projection_dim=spec.clip_hidden, guidance_embeds=not schnell,
        axes_dims_rope=(spec.head_dim - 2 * ((spec.head_dim - rope) // 2), (spec.head_dim - rope) // 2,
                        (spec.head_dim - rope) // 2))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**(FLUX_SCHNELL_SCHEDULER if schnell else FLUX_DEV_SCHEDULER)),
        vae=vae16(spec, shift=0.1159, scale=0.3611),  # FLUX.1's VAE constants
        text_encoder=clip_encoder(spec.clip_hidden), tokenizer=build_tokenizer(pad_token="<|endoftext|>"),
        text_encoder_2=t5_encoder(spec.t5_dim), tokenizer_2=build_t5_tokenizer(),
        transformer=transformer.eval())


def write_flux_demos(models_dir: Path, size: str = "tiny") -> list[str]:
    """Write the FLUX dev and schnell demos and the FLUX LoRA; returns the items written
    (paths relative to ``models_dir``), checkpoints last."""
    from diffusers import FluxPipeline

    spec = SIZES[size]
    written = []
    with torch.random.fork_rng(devices=[]):
        for offset, (name, schnell) in enumerate(((FLUX_SCHNELL_NAME, True), (FLUX_DEV_NAME, False))):
            torch.manual_seed(_SEED + offset)
            pipe = build_flux_pipeline(spec, schnell=schnell)
            save_family_folder(pipe, models_dir / "checkpoints" / name,
                               clip_folders={"tokenizer": "<|endoftext|>"}, t5_folder="tokenizer_2")
            written.append(f"checkpoints/{name}")
        write_transformer_controlnet(_flux_controlnet(pipe.transformer), models_dir / "controlnets" / FLUX_CONTROLNET_NAME,
                                     seed=_SEED + 9)
        write_transformer_lora(pipe, FluxPipeline, FLUX_LORA_NAME, models_dir / "loras",
                               rank=spec.lora_rank, seed=_SEED + 7)
    return [f"loras/{FLUX_LORA_NAME}.safetensors", f"controlnets/{FLUX_CONTROLNET_NAME}", *written]


def _flux_controlnet(transformer):
    """A ``FluxControlNetModel`` of one double and one single block, the transformer's widths."""
    with warnings.catch_warnings():  # diffusers' own FluxPosEmbed import warns: nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        from diffusers import FluxControlNetModel

        config = transformer.config
        return FluxControlNetModel.from_transformer(
            transformer, num_layers=1, num_single_layers=1, attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads)


def write_transformer_controlnet(controlnet, target: Path, *, seed: int) -> None:
    """Save a FLUX/SD3 ControlNet made from its transformer, its zero-initialised parts (the
    control input embedding and the per-block outputs) made random: a fresh ControlNet adds
    exactly zero, and the tests must see a control image change the picture."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in controlnet.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    controlnet.eval().save_pretrained(target, safe_serialization=True)


def write_family_demos(models_dir: Path, size: str, families: tuple[str, ...]) -> list[str]:
    """The FLUX.1 and/or SD3.5 demos named in ``families`` (``"flux"``, ``"sd3"``); the items written."""
    from pixelmill.engine.demo_sd3 import write_sd3_demo  # demo_sd3 imports this module

    return [*(write_flux_demos(models_dir, size) if "flux" in families else []),
            *(write_sd3_demo(models_dir, size) if "sd3" in families else [])]

"""Names of SDXL UNet and OpenCLIP weights: diffusers <-> SGM (original Stability) layout.

Single-file SDXL checkpoints and kohya LoRAs name UNet modules the SGM way
(``input_blocks.4.1.transformer_blocks.0.attn1.to_q``); diffusers names them by block
(``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``). :func:`block_pairs`
derives the block mapping from a UNet's layout, so it holds for the demo model's small
UNet as for SDXL's. Pure string work: no torch, no diffusers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


_TOP_PAIRS = [
    ("conv_in", "input_blocks.0.0", False), ("time_embedding.linear_1", "time_embed.0", False),
    ("time_embedding.linear_2", "time_embed.2", False), ("add_embedding.linear_1", "label_emb.0.0", False),
    ("add_embedding.linear_2", "label_emb.0.2", False), ("conv_norm_out", "out.0", False),
    ("conv_out", "out.2", False), ("mid_block.resnets.0", "middle_block.0", True),
    ("mid_block.attentions.0", "middle_block.1", False), ("mid_block.resnets.1", "middle_block.2", True),
]
_RESNET_NAMES = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                 ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_OPEN_CLIP_NAMES = {"attn.out_proj.weight": "self_attn.out_proj", "mlp.c_fc.weight": "mlp.fc1",
                    "mlp.c_proj.weight": "mlp.fc2"}


@dataclass(frozen=True)
class UnetLayout:
    """The UNet block structure that fixes how diffusers names map to SGM names."""

    layers: int
    down_attn: tuple[bool, ...]
    up_attn: tuple[bool, ...]

    @classmethod
    def from_config(cls, config: dict) -> UnetLayout | None:
        """From a diffusers ``unet/config.json``; None for layouts this mapping cannot express."""
        layers = config.get("layers_per_block")
        if isinstance(layers, list):
            layers = layers[0] if len(set(layers)) == 1 else None
        down = tuple("CrossAttn" in t for t in config.get("down_block_types") or ())
        up = tuple("CrossAttn" in t for t in config.get("up_block_types") or ())
        return cls(layers, down, up) if isinstance(layers, int) and down and len(down) == len(up) else None

    @classmethod
    def from_sgm_keys(cls, keys) -> UnetLayout | None:
        """Inferred from SGM weight names: the first downsampler sits after ``layers`` blocks."""
        found = [re.match(r"input_blocks\.(\d+)\.(\d+)\.(op\.)?", k) for k in keys]
        found = [(int(m[1]), int(m[2]), bool(m[3])) for m in found if m]
        ops = sorted(i for i, _, op in found if op)
        if not ops:
            return None
        layers = ops[0] - 1
        blocks = (max(i for i, _, _ in found) + 1) // (layers + 1)
        down = tuple((1 + b * (layers + 1), 1) in {(i, j) for i, j, _ in found} for b in range(blocks))
        up = tuple(any(k.startswith(f"output_blocks.{b * (layers + 1)}.1.transformer_blocks.") for k in keys)
                   for b in range(blocks))
        return cls(layers, down, up)


def block_pairs(layout: UnetLayout) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, SGM prefix, is a resnet) for every UNet block of ``layout``."""
    n, per = len(layout.down_attn), layout.layers + 1
    pairs = list(_TOP_PAIRS)
    for b in range(n):
        for i in range(layout.layers):
            pairs += [(f"down_blocks.{b}.resnets.{i}", f"input_blocks.{1 + b * per + i}.0", True),
                      (f"down_blocks.{b}.attentions.{i}", f"input_blocks.{1 + b * per + i}.1", False)]
        for i in range(per):
            pairs += [(f"up_blocks.{b}.resnets.{i}", f"output_blocks.{b * per + i}.0", True),
                      (f"up_blocks.{b}.attentions.{i}", f"output_blocks.{b * per + i}.1", False)]
        if b < n - 1:  # the last down and up blocks have no resampler
            downsampler = f"input_blocks.{b * per + per}.0.op"
            pairs.append((f"down_blocks.{b}.downsamplers.0.conv", downsampler, False))
            upsampler = f"output_blocks.{b * per + layout.layers}.{2 if layout.up_attn[b] else 1}.conv"
            pairs.append((f"up_blocks.{b}.upsamplers.0.conv", upsampler, False))
    return pairs


def _translate(name: str, pairs: list[tuple[str, str, bool]], src: int, dst: int) -> str | None:
    for pair in pairs:
        prefix = pair[src]
        if name != prefix and not name.startswith(prefix + "."):
            continue
        rest = name[len(prefix) + 1:]
        if pair[2] and rest:  # resnet internals are named differently too
            inner = next((r for r in _RESNET_NAMES if rest == r[src] or rest.startswith(r[src] + ".")), None)
            if inner is None:
                return None
            rest = inner[dst] + rest[len(inner[src]):]
        return pair[dst] + ("." + rest if rest else "")
    return None


def to_sgm(name: str, pairs: list[tuple[str, str, bool]]) -> str | None:
    """The SGM name of a diffusers UNet module (None if it has none)."""
    return _translate(name, pairs, 0, 1)


def from_sgm(name: str, pairs: list[tuple[str, str, bool]]) -> str | None:
    """The diffusers name of an SGM UNet module (None if it has none)."""
    return _translate(name, pairs, 1, 0)


def open_clip_to_hf(header: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """OpenCLIP text-encoder weight shapes under HF CLIP module names (fused qkv split)."""
    modules = {}
    for key, shape in header.items():
        match = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", key)
        if key == "text_projection" and len(shape) == 2:  # stored transposed in OpenCLIP
            modules["text_projection"] = (shape[1], shape[0])
        if not match:
            continue
        layer = f"encoder.layers.{match[1]}."
        if match[2] == "attn.in_proj_weight" and len(shape) == 2:
            for proj in "qkv":
                modules[f"{layer}self_attn.{proj}_proj"] = (shape[0] // 3, shape[1])
        elif match[2] in _OPEN_CLIP_NAMES:
            modules[layer + _OPEN_CLIP_NAMES[match[2]]] = shape
    return modules

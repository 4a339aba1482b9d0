"""Names of FLUX.1 transformer weights: diffusers <-> BFL (Black Forest Labs) layout.

Diffusers splits what BFL fuses: BFL's ``double_blocks.0.img_attn.qkv`` is diffusers'
``transformer_blocks.0.attn.to_q``/``to_k``/``to_v`` stacked on the output side, and
``single_blocks.0.linear1`` is ``to_q``/``to_k``/``to_v``/``proj_mlp``. Kohya, ComfyUI and
BFL's own LoRAs name the BFL modules; diffusers/peft (and ai-toolkit) LoRAs the diffusers
ones. :func:`with_bfl_names` adds the fused BFL names (and shapes) to a diffusers-layout
transformer's weights, :func:`with_diffusers_names` the split diffusers names to a BFL
file's, so one lookup serves both kinds of LoRA. Pure string work: no torch, no diffusers.
"""

from __future__ import annotations

import re

BFL_ROOTS = ("double_blocks", "single_blocks", "img_in", "txt_in", "time_in", "vector_in", "guidance_in",
             "final_layer")
"""First parts of BFL module names (kohya writes them flattened: ``lora_unet_double_blocks_0_…``)."""

_DOUBLE = [  # BFL module in a double block -> diffusers modules in transformer_blocks.N
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")), ("img_attn.proj", ("attn.to_out.0",)),
    ("img_mlp.0", ("ff.net.0.proj",)), ("img_mlp.2", ("ff.net.2",)), ("img_mod.lin", ("norm1.linear",)),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("txt_attn.proj", ("attn.to_add_out",)), ("txt_mlp.0", ("ff_context.net.0.proj",)),
    ("txt_mlp.2", ("ff_context.net.2",)), ("txt_mod.lin", ("norm1_context.linear",)),
]
_SINGLE = [  # BFL module in a single block -> diffusers modules in single_transformer_blocks.N
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")), ("linear2", ("proj_out",)),
    ("modulation.lin", ("norm.linear",)),
]
_GLOBAL = [
    ("img_in", "x_embedder"), ("txt_in", "context_embedder"), ("final_layer.linear", "proj_out"),
    ("final_layer.adaLN_modulation.1", "norm_out.linear"),
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
]
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks|double_blocks|single_blocks)\.(\d+)\.")


def _pairs(blocks: dict[str, set[int]]) -> list[tuple[str, tuple[str, ...]]]:
    """(BFL module, diffusers modules) for every block index seen in either layout."""
    pairs = [(bfl, (diffusers,)) for bfl, diffusers in _GLOBAL]
    for index in sorted(blocks.get("transformer_blocks", set()) | blocks.get("double_blocks", set())):
        pairs += [(f"double_blocks.{index}.{b}", tuple(f"transformer_blocks.{index}.{d}" for d in ds))
                  for b, ds in _DOUBLE]
    for index in sorted(blocks.get("single_transformer_blocks", set()) | blocks.get("single_blocks", set())):
        pairs += [(f"single_blocks.{index}.{b}", tuple(f"single_transformer_blocks.{index}.{d}" for d in ds))
                  for b, ds in _SINGLE]
    return pairs


def _blocks(modules) -> dict[str, set[int]]:
    blocks: dict[str, set[int]] = {}
    for module in modules:
        match = _BLOCK.match(module)
        if match:
            blocks.setdefault(match.group(1), set()).add(int(match.group(2)))
    return blocks


def is_flux_transformer(modules) -> bool:
    """Whether weight names are a FLUX.1 transformer's (either layout)."""
    return any(m.startswith(("single_transformer_blocks.", "double_blocks.", "single_blocks.")) for m in modules)


def with_bfl_names(modules: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """A diffusers-layout FLUX transformer's weight shapes plus its fused BFL names."""
    out = dict(modules)
    for bfl, parts in _pairs(_blocks(modules)):
        shapes = [modules.get(part) for part in parts]
        if all(s is not None and len(s) == 2 for s in shapes) and len({s[1] for s in shapes}) == 1:
            out.setdefault(bfl, (sum(s[0] for s in shapes), shapes[0][1]))
    return out


def with_diffusers_names(modules: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """A BFL-layout FLUX transformer's weight shapes plus the split diffusers names.

    A fused projection splits into equal parts of the hidden size (its input side); the
    single block's ``linear1`` leaves the rest to ``proj_mlp``."""
    out = dict(modules)
    for bfl, parts in _pairs(_blocks(modules)):
        shape = modules.get(bfl)
        if shape is None or len(shape) != 2:
            continue
        if len(parts) == 1:
            out.setdefault(parts[0], shape)
            continue
        hidden = shape[1]
        for part in parts:
            out.setdefault(part, (shape[0] - 3 * hidden if part.endswith("proj_mlp") else hidden, hidden))
    return out

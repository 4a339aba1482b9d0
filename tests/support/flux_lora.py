"""Kohya- and BFL-format FLUX.1 LoRAs for the demo transformer, written as trainers write them.

Kohya (sd-scripts) names BFL's fused modules flattened (``lora_unet_double_blocks_0_img_attn_qkv``)
with ``lora_down``/``lora_up`` halves and an ``alpha``; ComfyUI/BFL exports keep the dots under
``diffusion_model.``. Shapes are read from the demo transformer's own header: a fused module's
output side is the sum of the diffusers modules it stands for (written out here, independently
of ``pixelmill.registry.flux_names``), its input side theirs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from pixelmill.registry.safetensors_header import read_header

DOUBLE = {  # BFL module in double_blocks.N -> diffusers modules in transformer_blocks.N
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
}
SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",)}


def fused_shapes(transformer_file: Path, *, single: bool = False) -> dict[str, tuple[int, int]]:
    """BFL module name -> (out, in) of the demo transformer, for its double (and single) blocks."""
    header = read_header(transformer_file)
    blocks = sorted({int(k.split(".")[1]) for k in header if k.startswith("transformer_blocks.")})
    tables = [("double_blocks", "transformer_blocks", DOUBLE, blocks)]
    if single:
        singles = sorted({int(k.split(".")[1]) for k in header if k.startswith("single_transformer_blocks.")})
        tables.append(("single_blocks", "single_transformer_blocks", SINGLE, singles))
    shapes = {}
    for bfl_root, root, table, indices in tables:
        for index in indices:
            for bfl, parts in table.items():
                weights = [header[f"{root}.{index}.{part}.weight"] for part in parts]
                shapes[f"{bfl_root}.{index}.{bfl}"] = (sum(w[0] for w in weights), weights[0][1])
    return shapes


def write_flux_lora(path: Path, shapes: dict[str, tuple[int, int]], *, style: str = "kohya", rank: int = 4,
                    seed: int = 0, scale: float = 0.5) -> Path:
    """Save a random LoRA over ``shapes`` as kohya (``style="kohya"``) or BFL/ComfyUI names."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for module, (out, inp) in shapes.items():
        name = ("lora_unet_" + module.replace(".", "_")) if style == "kohya" else f"diffusion_model.{module}"
        tensors[f"{name}.lora_down.weight"] = (rng.standard_normal((rank, inp)) * scale).astype(np.float32)
        tensors[f"{name}.lora_up.weight"] = (rng.standard_normal((out, rank)) * scale).astype(np.float32)
        tensors[f"{name}.alpha"] = np.array(float(rank), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path

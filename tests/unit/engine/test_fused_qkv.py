"""The CUDA-only QKV fusion really works with this diffusers (checked on CPU)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pixelmill.engine.device import _fuse_qkv, select_device  # noqa: E402
from pixelmill.engine.loader import load_folder  # noqa: E402


def _image(pipe) -> np.ndarray:
    out = pipe(prompt="a cat", width=64, height=64, num_inference_steps=2, output_type="np",
               generator=torch.Generator("cpu").manual_seed(3))
    return np.asarray(out.images[0])


def test_fusing_qkv_keeps_the_image(demo_models):
    pipe = load_folder(demo_models / "checkpoints" / "demo", select_device("cpu"))
    before = _image(pipe)
    _fuse_qkv(pipe)
    fused = [p for p in pipe.unet.attn_processors.values() if "Fused" in type(p).__name__]
    assert fused, "no attention processor was fused"
    assert np.abs(_image(pipe) - before).max() < 1e-3

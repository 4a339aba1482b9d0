"""Live previews: a cheap RGB look at the latents of a running batch, every few steps.

No VAE call: SDXL's four latent channels map to colour almost linearly, so a fixed 4×3
matrix plus a bias turns the latents into an image at the latents' own resolution (1/8
of the output's side: 128×128 for a 1024×1024 image). The factors are the published
linear fit of the SDXL VAE's decodings to its latents that several SDXL front ends use
for their "latent preview"; they apply to the latents as the pipeline holds
them (already multiplied by the VAE's ``scaling_factor``) and give RGB in [-1, 1].

Cost: the projection runs in float32 on the latents' own device (a few thousand
multiply-adds per pixel of a small image), and only the small uint8 result goes to
the CPU, where each request's images become one JPEG of a few KB. A preview is made
every ``preview_steps`` steps, at most every :data:`MIN_GAP_S`, never on the last step
(the finished image is on its way), and only when a caller asked for previews.

The latents seen are the current noisy ones (what the scheduler carries), not a
prediction of the clean image: early previews are mostly noise and the picture
emerges as the schedule goes on.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

SDXL_LATENT_RGB = (
    # R        G        B      per latent channel
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
"""SDXL latent channel → RGB weights (rows: the 4 channels; columns: R, G, B)."""
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)
"""Added to the projection, per RGB channel, before mapping [-1, 1] to [0, 255]."""

MAX_SIDE = 256
"""Longest side of one image's preview in pixels; larger latents are area-averaged down."""
MIN_GAP_S = 0.5
"""Least time between two previews of a batch: the store keeps about one a second per
job, so computing them faster would only be thrown away."""
JPEG_QUALITY = 75
PREVIEW_MEDIA_TYPE = "image/jpeg"

PreviewSink = Callable[[int, int, dict[int, bytes]], None]
"""``sink(step, total, {request index: JPEG bytes})``, called on the engine thread."""


def latents_to_rgb(latents: torch.Tensor, *, max_side: int = MAX_SIDE) -> torch.Tensor:
    """``(batch, 4, h, w)`` SDXL latents → ``(batch, h', w', 3)`` uint8 RGB on the same device.

    Computed in float32 whatever the latents' dtype (fp16/bf16 on CUDA would round the
    small weights); ``h', w'`` are ``h, w`` scaled down so the longest side is at most
    ``max_side``.
    """
    if latents.ndim != 4 or latents.shape[1] != len(SDXL_LATENT_RGB):
        raise ValueError(f"expected (batch, 4, h, w) SDXL latents, got shape {tuple(latents.shape)}")
    x = latents.detach().to(torch.float32)
    height, width = x.shape[-2:]
    if max(height, width) > max_side:
        # Averaging commutes with the linear projection: shrink first, project fewer pixels.
        scale = max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = F.interpolate(x, size=size, mode="area")
    weight = torch.tensor(SDXL_LATENT_RGB, dtype=torch.float32, device=x.device)
    bias = torch.tensor(SDXL_LATENT_RGB_BIAS, dtype=torch.float32, device=x.device)
    rgb = torch.einsum("bchw,cr->bhwr", x, weight) + bias
    return ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)


def grid(images: np.ndarray) -> np.ndarray:
    """``(n, h, w, 3)`` → one ``(rows·h, cols·w, 3)`` image, left to right, top to bottom.

    ``cols = ceil(sqrt(n))``; empty cells of the last row stay black.
    """
    count, height, width, channels = images.shape
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    canvas = np.zeros((rows * cols, height, width, channels), dtype=images.dtype)
    canvas[:count] = images
    return canvas.reshape(rows, cols, height, width, channels).transpose(0, 2, 1, 3, 4).reshape(
        rows * height, cols * width, channels)


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """A small RGB array as JPEG bytes (no metadata: a preview is not a result)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class PreviewHook:
    """Called from the step callback with the latents; every ``every`` steps, sends each
    request of the call its preview (its images in one grid, JPEG).

    ``counts[i]`` is how many images request ``indices[i]`` has in the call, in latent
    batch order. A failure never fails the generation: it is logged once and previews
    stop for this call.
    """

    def __init__(self, every: int, counts: list[int], indices: list[int], sink: PreviewSink, *,
                 min_gap_s: float = MIN_GAP_S, clock: Callable[[], float] = time.monotonic):
        if every < 1:
            raise ValueError("every must be at least 1")
        self.every, self.counts, self.indices, self.sink = every, counts, indices, sink
        self.min_gap_s, self.clock = min_gap_s, clock
        self._last = float("-inf")
        self._broken = False

    def __call__(self, step: int, total: int, latents: torch.Tensor | None) -> None:
        """``step`` steps of ``total`` are done and ``latents`` is where the batch stands."""
        if self._broken or latents is None or step % self.every or step >= total:
            return
        now = self.clock()
        if now - self._last < self.min_gap_s:
            return
        self._last = now
        try:
            previews = self._render(latents)
        except Exception:  # a preview is a nicety: never let it fail an image
            log.exception("preview failed; no more previews for this generation")
            self._broken = True
            return
        self.sink(step, total, previews)

    def _render(self, latents: torch.Tensor) -> dict[int, bytes]:
        pixels = latents_to_rgb(latents).cpu().numpy()  # the only device→host copy: a few KB
        if pixels.shape[0] != sum(self.counts):
            raise ValueError(f"{pixels.shape[0]} latents for {sum(self.counts)} images")
        previews, start = {}, 0
        for index, count in zip(self.indices, self.counts):
            previews[index] = encode_jpeg(grid(pixels[start:start + count]))
            start += count
        return previews


def preview_hook(
    every: int, counts: list[int], indices: list[int], sink: PreviewSink | None,
) -> PreviewHook | None:
    """The hook for one pipeline call, or None when previews are off (``every`` 0) or
    nobody receives them: then the step callback does no preview work at all."""
    if sink is None or every <= 0:
        return None
    return PreviewHook(every, counts, indices, sink)

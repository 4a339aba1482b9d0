"""Small image helpers for tests: make inputs, decode outputs, compare pixels."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode(data: bytes | str) -> Image.Image:
    """Open image bytes (or base64 text) fully."""
    raw = base64.b64decode(data) if isinstance(data, str) else data
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def gradient(width: int, height: int) -> Image.Image:
    """A deterministic, non-trivial RGB picture (so kept pixels are easy to check)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1), (x ^ y) & 255], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def alpha_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    """OpenAI-style mask: opaque everywhere, fully transparent (alpha 0) inside ``box``."""
    mask = np.full((height, width, 4), 255, dtype=np.uint8)
    left, top, right, bottom = box
    mask[top:bottom, left:right, 3] = 0
    return Image.fromarray(mask, "RGBA")


BATCH_TOLERANCE = 2
"""Largest per-channel difference (of 255) allowed between an image made in a batch and
the same image made alone. On CPU the matrix kernels block differently for different
batch sizes, so the float results differ in the last bits and a handful of 8-bit pixels
round the other way (measured: at most 1). Same batch size ⇒ bit-identical."""


def assert_same_image(a: Image.Image, b: Image.Image, tolerance: int = BATCH_TOLERANCE) -> None:
    """Same image up to batch-size rounding: max difference ≤ tolerance, mean tiny."""
    diff = np.abs(pixels(a) - pixels(b))
    assert diff.max() <= tolerance, f"max pixel difference {diff.max()}"
    assert diff.mean() < 0.05, f"mean pixel difference {diff.mean():.3f}"

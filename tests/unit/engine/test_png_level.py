"""PNG outputs at the configured zlib level: smaller levels are faster, the pixels identical."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from pixelmill.core.types import OutputFormat
from pixelmill.images.codecs import encode_image


def zlib_level_class(png: bytes) -> int:
    """FLEVEL of the first IDAT's zlib header: 0 (level 0-1), 1 (2-5), 2 (6), 3 (7-9)."""
    offset = 8
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        if kind == b"IDAT":
            return png[offset + 9] >> 6
        offset += 12 + length
    raise AssertionError("no IDAT chunk")


def photo_like(size: int = 256) -> Image.Image:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x, y, (x + y) // 2], axis=-1).astype(float)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(("level", "flevel"), [(None, 2), (0, 0), (1, 0), (6, 2), (9, 3)])
def test_png_level_reaches_zlib(level, flevel):
    data = encode_image(photo_like(32), OutputFormat.png, parameters="a prompt", png_level=level)
    assert zlib_level_class(data) == flevel


def test_fast_level_is_bigger_but_pixel_identical():
    image = photo_like()
    fast = encode_image(image, OutputFormat.png, png_level=1)
    small = encode_image(image, OutputFormat.png, png_level=9)
    assert len(small) < len(fast)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast))), np.asarray(Image.open(io.BytesIO(small))))


def test_the_engine_encodes_at_the_configured_level(engine):
    from pixelmill.core.types import GenerationRequest

    assert engine.settings.png_compress_level == 1  # the default: fast
    result = engine.generate_batch([GenerationRequest(prompt="a", width=64, height=64, steps=1, seed=1, n=2)])[0]
    assert [zlib_level_class(image.data) for image in result.images] == [0, 0]
    assert [image.seed for image in result.images] == [1, 2]  # pool results keep their order

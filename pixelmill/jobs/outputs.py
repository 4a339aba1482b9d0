"""The worker's last look at a backend's images before they are stored: no blank outputs.

A numeric overflow (fp16 VAE, a bad checkpoint) turns into NaN in the model output and
into an all-black image once encoded. The diffusers engine refuses those itself; this
check holds for every backend, so a black image is never stored as a success.

It stays cheap: an encoded image that is all one colour compresses to almost nothing,
so only images well under the size of any real picture are decoded to be sure.
"""

from __future__ import annotations

import io

from PIL import Image

from pixelmill.core.types import GeneratedImage, JobResult

INVALID_OUTPUT = "invalid_output"
"""Error code of a job whose backend returned a blank (NaN/overflow) image."""
SUSPECT_BYTES_PER_PIXEL = 1 / 16
"""Encoded images smaller than this per pixel are decoded and checked (real ones are far larger)."""


def is_blank(image: GeneratedImage) -> bool:
    """Whether ``image`` is entirely black: what NaN output looks like once encoded."""
    if len(image.data) >= image.width * image.height * SUSPECT_BYTES_PER_PIXEL:
        return False
    with Image.open(io.BytesIO(image.data)) as decoded:
        extrema = decoded.convert("RGB").getextrema()
    return all(high == 0 for _low, high in extrema)


def blank_output_reason(result: JobResult) -> str | None:
    """Why ``result`` must not be stored (a blank image), or None when it is fine."""
    for index, image in enumerate(result.images):
        if is_blank(image):
            return (f"image {index} came out entirely black: the model produced NaN/overflowing "
                    "values (an fp16-safe VAE or fp32 may be needed); nothing was stored")
    return None

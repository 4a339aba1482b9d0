"""A1111's image conventions for img2img and inpaint, turned into pixelmill's inputs.

Pixel work only, run in the API's CPU pool. A1111 reads an inpaint mask as **white =
repaint** (an RGBA mask with transparency: opaque = repaint), threshold above 128; it
sizes the init image to ``width``×``height`` by ``resize_mode`` (0 stretch, 1 crop, 2
pad with the edge pixels) and, with ``inpaint_full_res`` ("only masked"), generates the
mask's box (plus padding, grown to the output's aspect) at full size and pastes it back.
pixelmill's inpaint takes a binary mode-``L`` mask of the image's size (255 = repaint);
:func:`pixelmill.images.masks.paste_back` keeps every unmasked pixel bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from pixelmill.core.errors import InvalidRequest
from pixelmill.images.masks import REPAINT, flatten, paste_back

MASK_THRESHOLD = 128
"""A1111 repaints where the mask's value (luminance, or alpha for a transparent mask) is above this."""

RESIZE_MODES = {0: "just resize", 1: "crop and resize", 2: "resize and fill"}
"""The ``resize_mode`` values pixelmill runs (3, "just resize (latent upscale)", it does not)."""


def binary_mask(mask: Image.Image, *, invert: bool, param: str = "mask") -> Image.Image:
    """A1111's mask as pixelmill's: 255 where A1111 repaints (after ``inpainting_mask_invert``).

    A mask with an alpha channel that is not fully opaque is read by its alpha (A1111's
    inpaint sketch: painted = opaque); any other by its luminance. A mask that would
    repaint nothing is refused naming ``param`` (nothing would change).
    """
    if "A" in mask.getbands() and mask.getchannel("A").getextrema() != (255, 255):
        values = np.asarray(mask.getchannel("A"))
    else:
        values = np.asarray(mask.convert("L"))
    repaint = values > MASK_THRESHOLD
    if invert:
        repaint = ~repaint
    if not repaint.any():
        raise InvalidRequest(f"{param} marks no pixel to repaint (white, or opaque in a transparent mask, "
                             "is repainted; inpainting_mask_invert=1 swaps that)", param=param)
    return Image.fromarray(np.where(repaint, REPAINT, 0).astype(np.uint8), mode="L")


def fit(image: Image.Image, size: tuple[int, int], mode: int, *, nearest: bool = False) -> Image.Image:
    """``image`` at ``size`` by A1111's ``resize_mode``: 0 stretches, 1 scales to cover and
    crops the centre, 2 scales to fit and extends the edge pixels into the border."""
    if image.size == size:
        return image
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    width, height = size
    if mode == 0:
        return image.resize(size, resample)
    ratio_w, ratio_h = width / image.width, height / image.height
    scale = max(ratio_w, ratio_h) if mode == 1 else min(ratio_w, ratio_h)
    scaled = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    if mode == 1:
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    pad_x, pad_y = width - scaled.width, height - scaled.height
    array = np.asarray(scaled)
    widths = [(pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)]
    widths += [(0, 0)] * (array.ndim - 2)  # colour channels: no padding
    return Image.fromarray(np.pad(array, widths, mode="edge"), mode=scaled.mode)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """``inpainting_fill=0`` ("fill"): the masked area painted with the colours around it.

    The kept pixels are spread into the hole by blurs of shrinking radius, each one
    normalised by how much of its weight came from kept pixels, the finest on top where
    it reaches; the kept pixels themselves stay as they are (and so does a masked pixel
    no blur reaches: a mask that covers nearly everything has nothing to fill from).
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    keep = np.asarray(mask) < REPAINT // 2
    weight_image = Image.fromarray(np.where(keep, 255, 0).astype(np.uint8), mode="L")
    colour_image = Image.fromarray(np.where(keep[..., None], rgb, 0).astype(np.uint8), mode="RGB")
    out = rgb.astype(np.float64)
    for radius in (256, 64, 16, 4, 2):
        weight = np.asarray(weight_image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)
        colour = np.asarray(colour_image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)
        reached = (weight >= 32) & ~keep  # 8-bit blurs: a thin weight gives a coarse colour
        layer = colour * 255 / np.maximum(weight, 1)[..., None]
        out[reached] = layer[reached]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="RGB")


@dataclass(frozen=True)
class Crop:
    """Where an "only masked" inpaint's generated box goes back: the full-size original,
    its binary mask, the box (left, top, right, bottom) and the mask blur."""

    original: Image.Image
    mask: Image.Image
    box: tuple[int, int, int, int]
    blur: int


def crop_box(mask: Image.Image, padding: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The mask's bounding box plus ``padding``, grown to ``size``'s aspect ratio, inside the image."""
    left, top, right, bottom = mask.getbbox() or (0, 0, mask.width, mask.height)
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(mask.width, right + padding), min(mask.height, bottom + padding)
    target = size[0] / size[1]
    box_w, box_h = right - left, bottom - top
    if box_w / box_h < target:
        box_w = min(mask.width, round(box_h * target))
    else:
        box_h = min(mask.height, round(box_w / target))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    new_left = int(min(max(0, round(cx - box_w / 2)), mask.width - box_w))
    new_top = int(min(max(0, round(cy - box_h / 2)), mask.height - box_h))
    return new_left, new_top, new_left + box_w, new_top + box_h


def paste_crop(crop: Crop, generated: Image.Image) -> Image.Image:
    """The original with the generated box pasted back where the mask repaints."""
    left, top, right, bottom = crop.box
    canvas = flatten(crop.original).copy()
    box = generated.convert("RGB").resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    canvas.paste(box, (left, top))
    return paste_back(flatten(crop.original), canvas, crop.mask, blur=crop.blur)


@dataclass(frozen=True)
class Img2ImgInputs:
    """What an A1111 img2img body's pictures become: the init image and mask to run (PNG-ready
    images at the output size) and, for "only masked", where the result goes back."""

    image: Image.Image
    mask: Image.Image | None
    crop: Crop | None = None


def img2img_inputs(image: Image.Image, mask: Image.Image | None, *, size: tuple[int, int] | None,
                   resize_mode: int, invert: bool, fill: int, only_masked: bool, padding: int,
                   blur: int) -> Img2ImgInputs:
    """The init image (and binary mask) A1111 would denoise, from the decoded uploads.

    ``size`` None: the image's own size (pixelmill then fits it to the limits). The
    returned images are exactly ``size`` so the engine never reads a larger target as an
    outpaint: A1111 resizes, it never extends the canvas.
    """
    image = flatten(image)
    size = size or image.size
    if mask is None:
        return Img2ImgInputs(fit(image, size, resize_mode), None)
    binary = binary_mask(mask, invert=invert)
    if binary.size != image.size:
        binary = binary.resize(image.size, Image.Resampling.NEAREST)
    crop = None
    if only_masked:
        box = crop_box(binary, padding, size)
        crop = Crop(original=image, mask=binary, box=box, blur=blur)
        image, binary = image.crop(box).resize(size, Image.Resampling.LANCZOS), binary.crop(box)
        binary = binary.resize(size, Image.Resampling.NEAREST)
    else:
        image, binary = fit(image, size, resize_mode), fit(binary, size, resize_mode, nearest=True)
    if not np.asarray(binary).any():
        raise InvalidRequest("after resize_mode the mask marks no pixel to repaint", param="mask")
    if fill == 0:
        image = fill_masked(image, binary)
    return Img2ImgInputs(image, ImageOps.grayscale(binary), crop)

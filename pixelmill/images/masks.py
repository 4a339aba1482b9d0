"""Inpainting and outpainting masks with A1111 semantics.

Internal convention: a mode ``L`` image the size of the init image, **255 (white) =
repaint, 0 (black) = keep**. Conversions from the wire conventions (OpenAI's "alpha 0
= edit", or a black-and-white luminance mask) always produce a binary mask (only 0 and
255), so "keep" is unambiguous when the generated image is pasted back.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from pixelmill.core.errors import InvalidRequest

REPAINT = 255
KEEP = 0

LUMINANCE_THRESHOLD = 128
"""Luminance mask rule: a pixel whose greyscale value is >= this is repainted."""

ASPECT_TOLERANCE = 0.01
"""Relative aspect-ratio difference up to which a mask is resized instead of refused."""

NEUTRAL_GREY = (128, 128, 128)
"""Colour under fully transparent pixels when an RGBA image is flattened to RGB."""

_ANCHORS = {
    "center": (0.5, 0.5),
    "top": (0.5, 0.0),
    "bottom": (0.5, 1.0),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "top-left": (0.0, 0.0),
    "top-right": (1.0, 0.0),
    "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0),
}
"""Outpaint anchors: where the original sits, as fractions of the free space (x, y)."""


def mask_from_alpha(img: Image.Image, *, param: str = "mask", allow_empty: bool = False) -> Image.Image:
    """OpenAI convention: pixels with alpha exactly 0 are repainted, all others kept.

    Used for a ``mask`` upload and for an init image's own transparency (pass
    ``param="image"`` then). Raises ``InvalidRequest(param=param)`` when the image has
    no alpha channel or no fully transparent pixel, since either would edit nothing;
    with ``allow_empty`` (an outpaint, whose new border is the edit) both give a mask
    that keeps every pixel instead.
    """
    if not _has_alpha(img):
        if allow_empty:  # an opaque image keeps every pixel
            return _keep_all(img.size)
        raise InvalidRequest(
            f"{param} has no alpha channel. Fully transparent pixels (alpha 0) mark the "
            "area to edit: send an RGBA PNG, or a black-and-white mask with "
            "mask_mode=luminance.",
            param=param,
        )
    alpha = np.asarray(img.convert("RGBA").getchannel("A"))
    mask = np.where(alpha == 0, REPAINT, KEEP).astype(np.uint8)
    if not mask.any() and not allow_empty:
        raise InvalidRequest(
            f"{param} has no fully transparent pixel (alpha 0), so nothing would be "
            "edited. Make the area to edit transparent, or send a black-and-white mask "
            "with mask_mode=luminance.",
            param=param,
        )
    return Image.fromarray(mask, mode="L")


def mask_from_luminance(img: Image.Image, *, param: str = "mask", allow_empty: bool = False) -> Image.Image:
    """Black-and-white convention: greyscale value >= 128 is repainted, darker is kept.

    Any mode is accepted; transparency is ignored (the image is converted to ``L`` as
    it looks on black). Raises ``InvalidRequest(param=param)`` if no pixel is repainted,
    unless ``allow_empty`` (an outpaint: the new border is the edit).
    """
    grey = np.asarray(_on_black(img).convert("L"))
    mask = np.where(grey >= LUMINANCE_THRESHOLD, REPAINT, KEEP).astype(np.uint8)
    if not mask.any() and not allow_empty:
        raise InvalidRequest(
            f"{param} has no white pixel (luminance >= {LUMINANCE_THRESHOLD}), so nothing "
            "would be edited. White marks the area to repaint.",
            param=param,
        )
    return Image.fromarray(mask, mode="L")


def _has_alpha(img: Image.Image) -> bool:
    return "A" in img.getbands() or "transparency" in img.info


def _keep_all(size: tuple[int, int]) -> Image.Image:
    return Image.new("L", size, KEEP)


def _on_black(img: Image.Image) -> Image.Image:
    """Drop alpha the way the mask would be displayed on black (transparent = keep)."""
    if "A" not in img.getbands():
        return img
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)


def fit_mask(mask: Image.Image, size: tuple[int, int], *, param: str = "mask") -> Image.Image:
    """Make a mask match the image size, or refuse it.

    Rule: same size → unchanged; same aspect ratio within 1 % → resized with NEAREST
    (so it stays binary); otherwise ``InvalidRequest(param=param)`` naming both sizes.
    """
    if mask.size == tuple(size):
        return mask
    (mw, mh), (w, h) = mask.size, size
    if abs((mw / mh) / (w / h) - 1.0) <= ASPECT_TOLERANCE:
        return mask.resize((w, h), Image.Resampling.NEAREST)
    raise InvalidRequest(
        f"{param} is {mw}x{mh} but the image is {w}x{h}; the mask must have the same "
        "size or at least the same aspect ratio as the image.",
        param=param,
    )


def flatten(img: Image.Image) -> Image.Image:
    """RGB version of an image; transparent areas become neutral grey, not hidden colour."""
    if "A" not in img.getbands() and "transparency" not in img.info:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*NEUTRAL_GREY, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def is_outpaint(image_size: tuple[int, int], target_size: tuple[int | None, int | None] | None) -> bool:
    """Whether generating an image of ``image_size`` at ``target_size`` outpaints it.

    Outpainting: the target is at least as large in both dimensions and larger in one
    (the image is placed on it and the new border generated). No target, the same size
    or a smaller one is an inpaint (the image is resized). A target larger in one
    dimension and smaller in the other raises ``InvalidRequest(param="size")``: an
    outpaint only enlarges, and squeezing one side while padding the other is no edit
    anybody asks for. The API (to know whether the border alone is an edit) and the
    engine (to build the canvas) decide with this one rule.
    """
    if target_size is None or None in target_size:
        return False
    (w, h), (tw, th) = image_size, target_size
    if (tw < w and th > h) or (tw > w and th < h):
        raise InvalidRequest(
            f"The image ({w}x{h}) is larger than the requested size ({tw}x{th}) in one dimension "
            "and smaller in the other; to outpaint, ask for a size at least as large in both.",
            param="size",
        )
    return tw > w or th > h


def outpaint_canvas(
    image: Image.Image,
    target_size: tuple[int, int],
    *,
    anchor: str = "center",
    mask: Image.Image | None = None,
) -> tuple[Image.Image, Image.Image]:
    """Place ``image`` on a larger RGB canvas and return ``(canvas, mask)``.

    The new area is filled by extending the image's edge pixels outwards (so a
    partial-strength denoise starts from plausible colours rather than a flat grey
    frame); the mask is 255 over the new area and, over the original pixels, 0 or
    the given ``mask`` (image-sized, white = repaint) so an edit and an outpaint can
    be combined.
    ``anchor`` is one of center, top, bottom, left, right, top-left, top-right,
    bottom-left, bottom-right. Raises ``InvalidRequest(param="size")`` if the image is
    larger than the target in either dimension.
    """
    tw, th = target_size
    w, h = image.size
    if w > tw or h > th:
        raise InvalidRequest(
            f"The image ({w}x{h}) is larger than the requested size ({tw}x{th}); "
            "outpainting can only enlarge.",
            param="size",
        )
    if anchor not in _ANCHORS:
        raise InvalidRequest(
            f"Unknown anchor {anchor!r}; use one of {', '.join(_ANCHORS)}.", param="anchor"
        )
    fx, fy = _ANCHORS[anchor]
    left, top = round((tw - w) * fx), round((th - h) * fy)
    pad = ((top, th - h - top), (left, tw - w - left), (0, 0))
    canvas = np.pad(np.asarray(flatten(image)), pad, mode="edge")
    out_mask = np.full((th, tw), REPAINT, dtype=np.uint8)
    out_mask[top : top + h, left : left + w] = KEEP if mask is None else np.asarray(mask.convert("L"))
    return Image.fromarray(canvas, mode="RGB"), Image.fromarray(out_mask, mode="L")


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """Gaussian-blur a mask (Pillow's radius = standard deviation); 0 returns it as is."""
    if radius <= 0:
        return mask
    return mask.convert("L").filter(ImageFilter.GaussianBlur(radius))


def paste_back(
    original: Image.Image, generated: Image.Image, mask: Image.Image, *, blur: int
) -> Image.Image:
    """Composite the generated image over the original, feathering inside the mask.

    The blend weight of the generated image is ``min(blur_mask(mask, blur), mask)``: the
    blur softens the edge only on the repaint side, never spilling into the kept area.
    Guarantees (RGB output, size of ``original``):

    * every pixel where ``mask`` is 0 is bit-identical to ``original``, for any blur;
    * every pixel where that weight is 255 (mask 255 and, with blur > 0, more than
      about 2.5×blur pixels inside the mask edge) is bit-identical to ``generated``;
    * in between, a linear blend rounded to the nearest integer.

    ``generated`` is resized with LANCZOS when its size differs (e.g. after rounding to
    multiples of 8); ``mask`` must already be the size of ``original``.
    """
    if mask.size != original.size:
        raise ValueError(f"mask size {mask.size} != image size {original.size}")
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    hard = np.asarray(mask.convert("L"), dtype=np.uint16)
    soft = np.asarray(blur_mask(mask.convert("L"), blur), dtype=np.uint16)
    weight = np.minimum(hard, soft)[..., None]
    orig = np.asarray(flatten(original), dtype=np.uint16)
    gen = np.asarray(flatten(generated), dtype=np.uint16)
    # Integer blend: weight 0 gives exactly orig, weight 255 exactly gen.
    out = (orig * (255 - weight) + gen * weight + 127) // 255
    return Image.fromarray(out.astype(np.uint8), mode="RGB")


def prepare_inpaint(
    image: Image.Image,
    mask: Image.Image | None,
    *,
    mask_mode: Literal["alpha", "luminance"] = "alpha",
    outpaint: bool = False,
) -> tuple[Image.Image, Image.Image]:
    """Turn decoded uploads into ``(RGB image, binary L mask)`` of the image's size.

    With a mask upload: convert it by ``mask_mode`` and :func:`fit_mask` it (errors
    name ``mask``). Without one: the image's own transparency is the mask (alpha mode
    only; errors name ``image``). The image is flattened onto neutral grey, so pixels
    that were transparent do not carry hidden colours into the generation.

    ``outpaint`` (see :func:`is_outpaint`): the new border is generated whatever the
    mask says, so a mask (or an image) that keeps every original pixel is valid, and
    no mask at all keeps the original except where it is transparent (alpha mode).
    """
    if mask is not None:
        convert = mask_from_alpha if mask_mode == "alpha" else mask_from_luminance
        binary = fit_mask(convert(mask, param="mask", allow_empty=outpaint), image.size, param="mask")
    elif mask_mode == "alpha":
        binary = mask_from_alpha(image, param="image", allow_empty=outpaint)
    elif outpaint:
        binary = _keep_all(image.size)
    else:
        raise InvalidRequest("mask_mode=luminance needs a mask upload.", param="mask")
    return flatten(image), binary

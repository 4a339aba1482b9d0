"""Inpainting / outpainting masks and paste-back (pixelmill.images.masks)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixelmill.images.masks import (
    blur_mask,
    fit_mask,
    mask_from_alpha,
    mask_from_luminance,
    outpaint_canvas,
    paste_back,
    prepare_inpaint,
)
from pixelmill.core.errors import InvalidRequest


def _noise(size=(64, 48), seed=0, channels=3) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB" if channels == 3 else "RGBA")


def _rect_mask(size=(64, 48), box=(16, 12, 48, 36)) -> Image.Image:
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr, mode="L")


# ------------------------------------------------------------------ alpha / luminance


def test_alpha_zero_is_repaint():
    rgba = np.full((4, 6, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[1, 2, 3] = 0  # fully transparent → edit
    rgba[2, 3, 3] = 1  # almost transparent → still kept
    mask = mask_from_alpha(Image.fromarray(rgba, mode="RGBA"))
    arr = np.asarray(mask)
    assert mask.mode == "L" and mask.size == (6, 4)
    assert arr[1, 2] == 255
    assert arr.sum() == 255  # everything else 0


def test_alpha_mask_without_alpha_channel_refused():
    with pytest.raises(InvalidRequest) as exc_info:
        mask_from_alpha(Image.new("RGB", (8, 8)))
    assert exc_info.value.param == "mask"
    assert "RGBA" in exc_info.value.message
    assert "mask_mode=luminance" in exc_info.value.message


def test_image_without_transparent_pixel_refused_with_image_param():
    opaque = Image.new("RGBA", (8, 8), (1, 2, 3, 255))
    with pytest.raises(InvalidRequest) as exc_info:
        mask_from_alpha(opaque, param="image")
    assert exc_info.value.param == "image"
    with pytest.raises(InvalidRequest) as exc_info:
        prepare_inpaint(Image.new("RGB", (8, 8)), None, mask_mode="alpha")
    assert exc_info.value.param == "image"


def test_luminance_threshold():
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    mask = mask_from_luminance(Image.fromarray(grey, mode="L"))
    assert np.asarray(mask).tolist() == [[0, 0, 255, 255]]
    rgb = Image.fromarray(np.array([[[255, 255, 255], [10, 10, 10]]], dtype=np.uint8))
    assert np.asarray(mask_from_luminance(rgb)).tolist() == [[255, 0]]


def test_luminance_all_black_refused():
    with pytest.raises(InvalidRequest) as exc_info:
        mask_from_luminance(Image.new("L", (4, 4), 0))
    assert exc_info.value.param == "mask"


# ------------------------------------------------------------------ fit_mask


def test_fit_mask_same_size_unchanged():
    mask = _rect_mask()
    assert fit_mask(mask, (64, 48)) is mask


def test_fit_mask_same_aspect_resized_nearest():
    fitted = fit_mask(_rect_mask((32, 24), (8, 6, 24, 18)), (64, 48))
    assert fitted.size == (64, 48)
    assert set(np.unique(np.asarray(fitted))) == {0, 255}
    assert np.array_equal(np.asarray(fitted), np.asarray(_rect_mask()))


def test_fit_mask_aspect_within_one_percent_resized():
    assert fit_mask(Image.new("L", (100, 100)), (101, 100)).size == (101, 100)


def test_fit_mask_other_aspect_refused():
    with pytest.raises(InvalidRequest) as exc_info:
        fit_mask(Image.new("L", (64, 64)), (64, 48))
    assert exc_info.value.param == "mask"
    assert "64x64" in exc_info.value.message and "64x48" in exc_info.value.message


def test_prepare_inpaint_with_mask_upload():
    image = _noise((64, 48))
    mask_upload = Image.new("RGBA", (32, 24), (0, 0, 0, 255))
    mask_upload.paste((0, 0, 0, 0), (8, 6, 24, 18))
    rgb, mask = prepare_inpaint(image, mask_upload, mask_mode="alpha")
    assert rgb.mode == "RGB" and rgb.size == mask.size == (64, 48)
    assert np.array_equal(np.asarray(mask), np.asarray(_rect_mask()))
    with pytest.raises(InvalidRequest) as exc_info:
        prepare_inpaint(image, Image.new("L", (10, 30), 255), mask_mode="luminance")
    assert exc_info.value.param == "mask"


def test_prepare_inpaint_transparent_image_flattened_to_grey():
    image = _noise((8, 8), channels=4)
    arr = np.asarray(image).copy()
    arr[..., 3] = 255
    arr[0, 0, 3] = 0
    rgb, mask = prepare_inpaint(Image.fromarray(arr, mode="RGBA"), None)
    assert rgb.getpixel((0, 0)) == (128, 128, 128)
    assert np.asarray(mask)[0, 0] == 255 and np.asarray(mask).sum() == 255


# ------------------------------------------------------------------ outpaint


@pytest.mark.parametrize(
    ("anchor", "offset"),
    [("center", (16, 8)), ("top-left", (0, 0)), ("bottom-right", (32, 16)), ("top", (16, 0))],
)
def test_outpaint_canvas_geometry(anchor, offset):
    image = _noise((32, 16))
    canvas, mask = outpaint_canvas(image, (64, 32), anchor=anchor)
    assert canvas.mode == "RGB" and canvas.size == (64, 32)
    assert mask.mode == "L" and mask.size == (64, 32)
    x, y = offset
    m = np.asarray(mask)
    assert (m[y : y + 16, x : x + 32] == 0).all()
    assert (m == 255).sum() == 64 * 32 - 32 * 16
    assert np.array_equal(np.asarray(canvas)[y : y + 16, x : x + 32], np.asarray(image))


def test_outpaint_fill_extends_edges():
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    image.putpixel((0, 0), (200, 0, 0))
    canvas, _ = outpaint_canvas(image, (8, 8), anchor="bottom-right")
    assert canvas.getpixel((0, 0)) == (200, 0, 0)  # corner pixel extended
    assert canvas.getpixel((7, 0)) == (10, 20, 30)


def test_outpaint_larger_image_refused():
    with pytest.raises(InvalidRequest) as exc_info:
        outpaint_canvas(_noise((64, 16)), (32, 32))
    assert exc_info.value.param == "size"
    with pytest.raises(InvalidRequest) as exc_info:
        outpaint_canvas(_noise((16, 16)), (32, 32), anchor="middle")
    assert exc_info.value.param == "anchor"


# ------------------------------------------------------------------ blur / paste_back


def test_blur_mask():
    mask = _rect_mask()
    assert blur_mask(mask, 0) is mask
    blurred = np.asarray(blur_mask(mask, 4))
    assert 0 < blurred[24, 16] < 255  # edge softened
    assert blurred[24, 32] == 255 and blurred[0, 0] == 0


def _distance_outside(mask: np.ndarray) -> np.ndarray:
    """Chebyshev distance of each pixel to the nearest mask pixel (brute force, tiny)."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    d = np.maximum(abs(yy[..., None] - ys), abs(xx[..., None] - xs))
    return d.min(axis=-1)


@pytest.mark.parametrize("blur", [0, 4])
def test_paste_back_keeps_unmasked_pixels(blur):
    original, generated = _noise(seed=1), _noise(seed=2)
    mask = _rect_mask()
    out = np.asarray(paste_back(original, generated, mask, blur=blur))
    m = np.asarray(mask)
    orig, gen = np.asarray(original), np.asarray(generated)
    # the acceptance rule: keep pixels away from the edge are identical …
    far = _distance_outside(m) > blur * 2 + 1
    assert np.array_equal(out[far], orig[far])
    # … and in fact every keep pixel is, whatever the blur
    assert np.array_equal(out[m == 0], orig[m == 0])
    # deep inside the mask the generated pixels are used unchanged
    assert np.array_equal(out[24, 30:34], gen[24, 30:34])
    if blur == 0:
        assert np.array_equal(out[m == 255], gen[m == 255])
    else:
        edge_inside = out[24, 16].astype(int)
        assert not np.array_equal(edge_inside, gen[24, 16])  # feathered


def test_paste_back_resizes_generated():
    original = _noise((60, 44), seed=1)
    generated = Image.new("RGB", (64, 48), (5, 6, 7))
    mask = _rect_mask((60, 44), (10, 10, 50, 34))
    out = paste_back(original, generated, mask, blur=0)
    assert out.size == (60, 44) and out.mode == "RGB"
    assert out.getpixel((30, 20)) == (5, 6, 7)
    assert out.getpixel((0, 0)) == original.getpixel((0, 0))

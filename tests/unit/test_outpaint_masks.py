"""Outpainting masks: the new border is the edit, whatever the mask says about the original."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixelmill.core.errors import InvalidRequest
from pixelmill.images.masks import KEEP, REPAINT, is_outpaint, outpaint_canvas, prepare_inpaint

OPAQUE = Image.new("RGB", (16, 16), (200, 30, 90))


@pytest.mark.parametrize(("target", "expected"), [
    (None, False), ((None, None), False), ((16, 16), False), ((8, 8), False),
    ((32, 32), True), ((32, 16), True), ((16, 24), True),
])
def test_is_outpaint_only_when_the_target_enlarges(target, expected):
    assert is_outpaint((16, 16), target) is expected


@pytest.mark.parametrize("target", [(32, 8), (8, 32)])
def test_a_target_larger_one_way_and_smaller_the_other_names_size(target):
    with pytest.raises(InvalidRequest) as caught:
        is_outpaint((16, 16), target)
    assert caught.value.param == "size"


@pytest.mark.parametrize("mask", [
    None,                                          # no mask, opaque RGB image
    Image.new("RGBA", (16, 16), (0, 0, 0, 255)),   # all-opaque alpha mask
    Image.new("RGB", (16, 16), "white"),           # a mask without alpha: nothing transparent
])
def test_outpaint_keeps_the_whole_original_when_nothing_in_it_is_masked(mask):
    image, binary = prepare_inpaint(OPAQUE, mask, mask_mode="alpha", outpaint=True)
    assert image.tobytes() == OPAQUE.tobytes()
    assert binary.size == (16, 16) and not np.asarray(binary).any()
    _, canvas_mask = outpaint_canvas(image, (32, 32), mask=binary)
    arr = np.asarray(canvas_mask)
    assert (arr[8:24, 8:24] == KEEP).all()  # the original area: kept
    arr = arr.copy()
    arr[8:24, 8:24] = REPAINT
    assert (arr == REPAINT).all()  # the border: repainted


def test_outpaint_with_a_luminance_mask_that_keeps_everything_or_no_mask():
    _, black = prepare_inpaint(OPAQUE, Image.new("L", (16, 16), 0), mask_mode="luminance", outpaint=True)
    _, none = prepare_inpaint(OPAQUE, None, mask_mode="luminance", outpaint=True)
    assert not np.asarray(black).any() and not np.asarray(none).any()


def test_outpaint_mask_still_applies_to_the_original_area():
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    mask.putpixel((3, 5), (0, 0, 0, 0))
    _, binary = prepare_inpaint(OPAQUE, mask, outpaint=True)
    arr = np.asarray(binary)
    assert arr[5, 3] == REPAINT and arr.sum() == REPAINT
    transparent = OPAQUE.convert("RGBA")
    transparent.putpixel((1, 2), (0, 0, 0, 0))
    _, own = prepare_inpaint(transparent, None, outpaint=True)  # the image's own transparency
    assert np.asarray(own)[2, 1] == REPAINT and np.asarray(own).sum() == REPAINT


@pytest.mark.parametrize(("mask", "mode", "param"), [
    (None, "alpha", "image"),
    (Image.new("RGBA", (16, 16), (0, 0, 0, 255)), "alpha", "mask"),
    (Image.new("L", (16, 16), 0), "luminance", "mask"),
    (None, "luminance", "mask"),
])
def test_an_inpaint_that_edits_nothing_is_still_refused(mask, mode, param):
    with pytest.raises(InvalidRequest) as caught:
        prepare_inpaint(OPAQUE, mask, mask_mode=mode)
    assert caught.value.param == param

"""A1111's img2img/inpaint picture conventions: masks, resize modes, fill, "only masked"."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixelmill.api.a1111.images import binary_mask, crop_box, fill_masked, fit, img2img_inputs, paste_crop
from pixelmill.core.errors import InvalidRequest
from tests.support.images import gradient, pixels


def white_box(width: int, height: int, box: tuple[int, int, int, int], mode: str = "L") -> Image.Image:
    mask = Image.new(mode, (width, height), 0)
    mask.paste(255 if mode == "L" else (255, 255, 255), box)
    return mask


def test_white_is_repaint_and_invert_swaps_it():
    mask = white_box(8, 8, (2, 2, 6, 6))
    repaint = np.asarray(binary_mask(mask, invert=False))
    assert repaint[3, 3] == 255 and repaint[0, 0] == 0
    assert np.asarray(binary_mask(mask, invert=True))[3, 3] == 0


def test_threshold_is_above_128():
    mask = Image.new("L", (4, 1))
    mask.putdata([128, 129, 255, 0])
    assert list(np.asarray(binary_mask(mask, invert=False))[0]) == [0, 255, 255, 0]


def test_transparent_mask_reads_its_alpha_opaque_repaints():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # black and transparent ...
    rgba.paste((0, 0, 0, 255), (0, 0, 4, 8))        # ... left half opaque (black!) = painted
    repaint = np.asarray(binary_mask(rgba, invert=False))
    assert repaint[:, :4].min() == 255 and repaint[:, 4:].max() == 0


def test_empty_mask_is_refused_naming_mask():
    with pytest.raises(InvalidRequest) as raised:
        binary_mask(Image.new("L", (8, 8), 0), invert=False)
    assert raised.value.param == "mask"


def test_resize_modes_reach_the_size_and_keep_content_where_expected():
    wide = gradient(80, 40)
    for mode in (0, 1, 2):
        assert fit(wide, (40, 40), mode).size == (40, 40)
    cropped = fit(wide, (40, 40), 1)  # the centre 40x40 of the 80x40 picture
    assert np.abs(pixels(cropped) - pixels(wide.crop((20, 0, 60, 40)))).max() <= 2
    padded = np.asarray(fit(wide, (40, 40), 2))  # scaled to 40x20, edge rows repeated above and below
    assert (padded[0] == padded[9]).all() and (padded[-1] == padded[-10]).all()


def test_fill_changes_only_the_masked_area_with_surrounding_colours():
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    image.paste((0, 0, 255), (24, 24, 40, 40))  # blue square, to be filled from the red around it
    mask = white_box(64, 64, (24, 24, 40, 40))
    filled = np.asarray(fill_masked(image, mask)).astype(int)
    kept = np.asarray(mask) == 0
    assert (filled[kept] == np.asarray(image)[kept]).all()
    assert abs(filled[32, 32] - [200, 40, 40]).max() <= 2


def test_crop_box_pads_and_matches_the_output_aspect():
    mask = white_box(200, 100, (90, 40, 110, 60))
    left, top, right, bottom = crop_box(mask, 10, (64, 64))
    assert left <= 80 and top <= 30 and right >= 120 and bottom >= 70
    assert right - left == bottom - top
    assert 0 <= left and 0 <= top and right <= 200 and bottom <= 100
    edge = crop_box(white_box(200, 100, (0, 0, 10, 10)), 0, (64, 32))  # pushed inside at the corner
    assert edge[0] == 0 and edge[1] == 0 and (edge[2] - edge[0]) == 2 * (edge[3] - edge[1])


def test_only_masked_runs_the_box_at_full_size_and_pastes_back_keeping_the_rest():
    original = gradient(128, 96)
    mask = white_box(128, 96, (50, 30, 70, 50))
    inputs = img2img_inputs(original, mask, size=(64, 64), resize_mode=0, invert=False, fill=1,
                            only_masked=True, padding=8, blur=2)
    assert inputs.image.size == (64, 64) and inputs.mask.size == (64, 64) and inputs.crop is not None
    result = paste_crop(inputs.crop, Image.new("RGB", (64, 64), (0, 255, 0)))
    assert result.size == original.size
    outside = np.asarray(mask) == 0
    assert (np.asarray(result)[outside] == np.asarray(original)[outside]).all()
    assert tuple(np.asarray(result)[40, 60]) == (0, 255, 0)


def test_whole_picture_inpaint_is_resized_to_the_output_size_never_outpainted():
    inputs = img2img_inputs(gradient(32, 32), white_box(32, 32, (8, 8, 16, 16)), size=(64, 64), resize_mode=0,
                            invert=False, fill=0, only_masked=False, padding=0, blur=4)
    assert inputs.image.size == inputs.mask.size == (64, 64) and inputs.crop is None
    assert set(np.unique(np.asarray(inputs.mask))) == {0, 255}

"""Server limits on the internal request: each violation names its parameter."""

from __future__ import annotations

import pytest

from pixelmill.core.types import GenerationRequest, Mode
from pixelmill.core.errors import InvalidRequest
from pixelmill.settings import Settings
from pixelmill.core.policy import check_size, fit_size, validate_request

LIMITS = Settings()


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a cat"} | fields))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"width": 100, "height": 64}, "width"),
        ({"width": 64, "height": 60}, "height"),
        ({"width": 56, "height": 64}, "width"),
        ({"width": 2056, "height": 64}, "width"),
        ({"width": 64}, "width"),
        ({"steps": 0}, "steps"),
        ({"steps": 151}, "steps"),
        ({"n": 11}, "n"),
        ({"guidance": -1}, "guidance"),
        ({"strength": 1.5}, "strength"),
        ({"seed": -2}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"negative_prompt": "x" * 4001}, "negative_prompt"),
        ({"output_quality": 0}, "output_quality"),
        ({"clip_skip": 0}, "clip_skip"),
        ({"mode": Mode.img2img}, "init_image"),
        ({"mode": Mode.inpaint, "init_image": b"png"}, "mask_image"),
        ({"init_image": b"png"}, "init_image"),
        ({"mode": Mode.img2img, "init_image": b"png", "strength": 0}, "strength"),
    ],
)
def test_each_limit_names_its_parameter(fields, param):
    with pytest.raises(InvalidRequest) as info:
        validate_request(request(**fields), LIMITS)
    assert info.value.param == param


def test_valid_requests_pass():
    validate_request(request(), LIMITS)
    validate_request(request(width=2048, height=2048, steps=150, n=10, guidance=30, seed=0), LIMITS)
    validate_request(request(mode=Mode.img2img, prompt="", init_image=b"png"), LIMITS)


def test_pixel_budget():
    limits = Settings(max_pixels=512 * 512)
    check_size(512, 512, limits)
    with pytest.raises(InvalidRequest, match="pixels"):
        check_size(512, 520, limits)


def test_fit_size_keeps_aspect_within_limits():
    assert fit_size(640, 480, LIMITS) == (640, 480)
    width, height = fit_size(6000, 4000, LIMITS)
    assert width <= 2048 and width * height <= LIMITS.max_pixels
    assert width % 8 == 0 and height % 8 == 0
    assert abs(width / height - 1.5) < 0.02
    assert fit_size(67, 67, LIMITS) == (64, 64)

"""The request policy: defaults from the settings, sizes, names, and each limit naming
its parameter. (Was tests/unit/test_validation.py.)"""

from __future__ import annotations

import pytest
from PIL import Image

from pixelmill.core.errors import InvalidRequest, NotFound
from pixelmill.core.policy import as_resolved, check_size, fit_size, png_size, resolve
from pixelmill.core.types import GenerationRequest, LoraSpec, Mode, RefinerSpec, ResolvedRequest
from pixelmill.settings import Settings
from tests.support.images import gradient, png_bytes

POLICY = Settings().policy()
LIMITS = POLICY.limits
PNG = png_bytes(gradient(64, 64))


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a cat"} | fields))


def flat_png(width: int, height: int) -> bytes:
    """A one-colour PNG: a few kilobytes even at 3000×3000."""
    return png_bytes(Image.new("RGB", (width, height), (200, 120, 40)))


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
        ({"mode": Mode.inpaint, "init_image": PNG}, "mask_image"),
        ({"init_image": PNG}, "init_image"),
        ({"mode": Mode.img2img, "init_image": PNG, "strength": 0}, "strength"),
        ({"mode": Mode.img2img, "init_image": b"not a png"}, "init_image"),
        ({"scheduler": "no-such-sampler"}, "scheduler"),
        ({"loras": (LoraSpec(name="../x"),)}, "loras[0].name"),
    ],
)
def test_each_limit_names_its_parameter(fields, param):
    with pytest.raises(InvalidRequest) as info:
        resolve(request(**fields), POLICY)
    assert info.value.param == param


def test_valid_requests_pass():
    resolve(request(), POLICY)
    resolve(request(width=2048, height=2048, steps=150, n=10, guidance=30, seed=0), POLICY)
    resolve(request(mode=Mode.img2img, prompt="", init_image=PNG), POLICY)


def test_pixel_budget():
    limits = Settings(max_pixels=512 * 512).policy().limits
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


def test_every_unset_field_gets_the_settings_default():
    settings = Settings(default_steps=7, default_guidance=3.5, default_strength=0.5, default_mask_blur=9)
    resolved = resolve(request(mode=Mode.inpaint, init_image=PNG, mask_image=PNG), settings.policy())
    assert isinstance(resolved, ResolvedRequest)
    assert (resolved.steps, resolved.guidance, resolved.strength, resolved.mask_blur) == (7, 3.5, 0.5, 9)
    assert (resolved.width, resolved.height) == (64, 64)


def test_given_values_are_kept():
    given = {"steps": 12, "guidance": 0.0, "strength": 0.3, "mask_blur": 0}
    resolved = resolve(request(mode=Mode.img2img, init_image=PNG, **given), POLICY)
    assert {name: getattr(resolved, name) for name in given} == given


@pytest.mark.parametrize("mode", [Mode.img2img, Mode.inpaint])
def test_a_large_upload_without_size_runs_at_the_largest_allowed_size(mode):
    big = flat_png(3000, 3000)
    mask = big if mode is Mode.inpaint else None
    resolved = resolve(request(mode=mode, init_image=big, mask_image=mask), POLICY)
    assert (resolved.width, resolved.height) == (2048, 2048)
    check_size(resolved.width, resolved.height, LIMITS)


def test_the_image_size_keeps_its_aspect_and_a_given_size_wins():
    photo = flat_png(4000, 3000)
    resolved = resolve(request(mode=Mode.img2img, init_image=photo), POLICY)
    assert resolved.width * resolved.height <= LIMITS.max_pixels and resolved.width <= LIMITS.max_side
    assert resolved.width % 8 == 0 and resolved.height % 8 == 0
    assert abs(resolved.width / resolved.height - 4 / 3) < 0.01
    small = resolve(request(mode=Mode.img2img, init_image=flat_png(100, 61)), POLICY)
    assert (small.width, small.height) == (96, 64)
    given = resolve(request(mode=Mode.img2img, init_image=photo, width=512, height=384), POLICY)
    assert (given.width, given.height) == (512, 384)


def test_txt2img_without_size_keeps_the_model_native_size():
    resolved = resolve(request(), POLICY)
    assert (resolved.width, resolved.height) == (None, None)


def test_png_size_reads_the_header():
    assert png_size(flat_png(3000, 17)) == (3000, 17)


class FakeCatalog:
    def __init__(self, default_model: str | None, unknown: set[str] = frozenset()):
        self.default_model = default_model
        self.unknown = unknown
        self.checked: list[GenerationRequest] = []

    def check(self, request: GenerationRequest) -> None:
        self.checked.append(request)
        if request.model in self.unknown:
            raise NotFound(f"no model {request.model}", param="model")


@pytest.mark.parametrize(
    "name", [None, "", "dall-e-3", "gpt-image-1", "demo", "stabilityai/stable-diffusion-xl-base-1.0"])
def test_default_model_names_resolve_to_the_catalog_default(name):
    catalog = FakeCatalog("house-model")
    assert resolve(request(model=name), POLICY, catalog).model == "house-model"
    assert resolve(request(model=name), POLICY).model is None  # no catalog: "the default"


def test_other_model_names_are_kept_and_checked():
    catalog = FakeCatalog(None, unknown={"missing"})
    resolved = resolve(request(model="other"), POLICY, catalog)
    assert resolved.model == "other" and catalog.checked == [resolved]
    with pytest.raises(NotFound):
        resolve(request(model="missing"), POLICY, catalog)


def test_scheduler_names_become_canonical():
    assert resolve(request(scheduler="DPM++ 2M Karras"), POLICY).scheduler == "dpmpp_2m_karras"
    assert resolve(request(), POLICY).scheduler is None  # the model's own scheduler


def test_server_refiner_applies_to_txt2img_and_img2img_not_inpaint():
    policy = Settings(refiner="demo-refiner", refiner_switch_at=0.7).policy()
    assert resolve(request(), policy).refiner == RefinerSpec(name="demo-refiner", switch_at=0.7)
    assert resolve(request(mode=Mode.img2img, init_image=PNG), policy).refiner.name == "demo-refiner"
    assert resolve(request(mode=Mode.inpaint, init_image=PNG, mask_image=PNG), policy).refiner is None
    own = RefinerSpec(name="other", switch_at=0.5)
    assert resolve(request(refiner=own), policy).refiner == own


def test_lora_tags_move_out_of_the_prompt():
    resolved = resolve(request(prompt="a cat <lora:style:0.5>", loras=(LoraSpec(name="base"),)), POLICY)
    assert resolved.prompt.strip() == "a cat"
    assert resolved.loras == (LoraSpec(name="base"), LoraSpec(name="style", weight=0.5))


def test_resolving_twice_changes_nothing():
    once = resolve(request(mode=Mode.img2img, init_image=flat_png(3000, 2000), scheduler="Euler a"), POLICY)
    assert resolve(once, POLICY) == once


def test_a_stored_request_is_retyped_not_resolved_again():
    """A worker with other settings runs exactly what the API host stored."""
    stored = resolve(request(mode=Mode.img2img, init_image=PNG), POLICY)
    from_json = GenerationRequest.model_validate_json(stored.model_dump_json())
    other = Settings(default_steps=3, refiner="demo-refiner", max_side=32, min_side=8).policy()
    again = as_resolved(from_json, other)
    assert isinstance(again, ResolvedRequest) and again == stored
    fresh = as_resolved(request(steps=2), other)
    assert (fresh.steps, fresh.guidance, fresh.refiner.name) == (2, 5.0, "demo-refiner")


def test_a_resolved_img2img_request_has_a_size():
    with pytest.raises(ValueError):
        ResolvedRequest(prompt="x", mode=Mode.img2img, init_image=PNG, steps=1, guidance=1, strength=0.5,
                        mask_blur=0)


# --- issue 19 §7/§8: text the server cannot encode, integers printed as integers ---------


@pytest.mark.parametrize("param", ["prompt", "negative_prompt", "model", "scheduler"])
@pytest.mark.parametrize("text", ["\ud800", "a cat \udfff", "\udbff\udc00 paired by hand"])
def test_a_lone_surrogate_is_refused_naming_the_field(param, text):
    """JSON may spell "\\ud800"; UTF-8 cannot encode it, so storage and the tokenizer would
    fail later with a 500. The message must be encodable itself (it must not echo the text)."""
    with pytest.raises(InvalidRequest) as info:
        resolve(request(**{param: text}), POLICY)
    assert info.value.param == param
    info.value.message.encode("utf-8")


def test_a_surrogate_in_a_lora_tag_is_refused_before_the_tag_is_parsed():
    with pytest.raises(InvalidRequest) as info:
        resolve(request(prompt="a cat <lora:st\ud800yle:0.5>"), POLICY)
    assert info.value.param == "prompt"


def test_ordinary_non_ascii_text_passes():
    resolved = resolve(request(prompt="ein Kätzchen 🐱 猫", negative_prompt="ぼやけた"), POLICY)
    assert resolved.prompt == "ein Kätzchen 🐱 猫"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"seed": 2**32}, "seed must be between 0 and 4294967295, got 4294967296"),
        ({"seed": 99_999_999_999}, "got 99999999999"),
        ({"steps": 10**30}, f"steps must be between 1 and 150, got {10**30}"),
        ({"n": 11}, "n must be between 1 and 10, got 11"),
        ({"clip_skip": 1_000_000}, "clip_skip must be between 1 and 12, got 1000000"),
        ({"output_quality": 12_345_678}, "got 12345678"),
        ({"guidance": 31.5}, "guidance must be between 0 and 30, got 31.5"),
    ],
)
def test_range_errors_print_integers_as_integers(fields, expected):
    with pytest.raises(InvalidRequest) as info:
        resolve(request(**fields), POLICY)
    assert expected in info.value.message and "e+" not in info.value.message


# --- issue 19 §8: one default for the refiner hand-off ---------------------------------------


def test_an_unset_switch_at_is_filled_from_the_settings():
    assert RefinerSpec(name="other").switch_at is None  # unset: no second default here
    policy = Settings(refiner_switch_at=0.65).policy()
    assert resolve(request(refiner=RefinerSpec(name="other")), policy).refiner.switch_at == 0.65
    given = RefinerSpec(name="other", switch_at=0.5)
    assert resolve(request(refiner=given), policy).refiner == given


def test_a_resolved_refiner_always_has_its_switch_point():
    """The stored request is concrete: a worker with other settings runs the same hand-off."""
    stored = resolve(request(refiner=RefinerSpec(name="other")), Settings(refiner_switch_at=0.6).policy())
    again = as_resolved(GenerationRequest.model_validate_json(stored.model_dump_json()),
                        Settings(refiner_switch_at=0.9).policy())
    assert again.refiner.switch_at == 0.6


@pytest.mark.parametrize("param", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("text", ["(" * 1990 + "cat" + ")" * 1990, "[" * 2000 + "a cat", "(a cat:99)"])
def test_emphasis_the_engine_would_refuse_is_refused_before_queueing(param, text):
    """Issue 19 §7: nested "(" (2,000 of them) made a weight of 1.1^2000 = inf and a NaN image."""
    with pytest.raises(InvalidRequest) as info:
        resolve(request(**{param: text}), POLICY)
    assert info.value.param == param


def test_ordinary_emphasis_passes():
    resolve(request(prompt="a ((cat)) [dog] (hat:1.3)", negative_prompt="(blurry:1.2)"), POLICY)

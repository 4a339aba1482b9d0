"""The Replicate wire models: SDXL and FLUX inputs translated into the one request."""

from __future__ import annotations

import pytest

from pixelmill.api.replicate.protocol import PredictionCreate, PredictionInput
from pixelmill.api.replicate.router import duration_seconds, wait_seconds
from pixelmill.core.errors import InvalidRequest
from pixelmill.core.policy import resolve
from pixelmill.core.types import RANDOM_SEED, Mode, OutputFormat
from pixelmill.settings import Settings


def translate(server_refiner: str | None = None, image_png: bytes | None = None, mask_png: bytes | None = None,
              **input):
    return PredictionInput(**input).to_request(model="stability-ai/sdxl", image_png=image_png, mask_png=mask_png,
                                               server_refiner=server_refiner)


def test_sdxl_fields_map_to_the_request():
    request = translate(prompt="a fox", negative_prompt="blur", width=768, height=512, num_outputs=3,
                        scheduler="KarrasDPM", num_inference_steps=30, guidance_scale=6.0, seed=5)
    assert (request.prompt, request.negative_prompt, request.width, request.height, request.n) == (
        "a fox", "blur", 768, 512, 3)
    assert (request.steps, request.guidance, request.seed, request.scheduler) == (30, 6.0, 5, "KarrasDPM")
    assert request.model == "stability-ai/sdxl" and request.mode is Mode.txt2img


def test_omitted_fields_stay_unset_for_the_policy():
    request = translate(prompt="a fox")
    assert (request.width, request.height, request.steps, request.guidance) == (None, None, None, None)
    assert request.seed == RANDOM_SEED and request.n == 1 and request.refiner is None


@pytest.mark.parametrize(("name", "canonical"), [
    ("KarrasDPM", "dpmpp_2m_karras"), ("K_EULER_ANCESTRAL", "euler_a"), ("K_EULER", "euler"),
    ("DPMSolverMultistep", "dpmpp_2m"), ("HeunDiscrete", "heun"), ("DDIM", "ddim"), ("PNDM", "pndm"),
])
def test_replicate_scheduler_names_resolve(name, canonical):
    resolved = resolve(translate(prompt="a fox", scheduler=name), Settings().policy())
    assert resolved.scheduler == canonical


@pytest.mark.parametrize(("ratio", "megapixels", "size"), [
    ("1:1", None, (1024, 1024)), ("16:9", None, (1344, 768)), ("9:21", None, (640, 1536)),
    ("1:1", "0.25", (512, 512)), ("16:9", "0.25", (672, 384)),
])
def test_flux_aspect_ratios(ratio, megapixels, size):
    request = translate(prompt="a mug", aspect_ratio=ratio, megapixels=megapixels)
    assert (request.width, request.height) == size


def test_aspect_ratio_errors_name_it():
    with pytest.raises(InvalidRequest) as unknown:
        translate(prompt="a mug", aspect_ratio="7:3")
    assert unknown.value.param == "input.aspect_ratio"
    with pytest.raises(InvalidRequest) as both:
        translate(prompt="a mug", aspect_ratio="16:9", width=512)
    assert both.value.param == "input.aspect_ratio"
    assert translate(prompt="a mug", aspect_ratio="custom", width=512, height=256).width == 512


def test_output_format_and_quality():
    webp = translate(prompt="x", output_format="webp", output_quality=80)
    assert (webp.output_format, webp.output_quality) == (OutputFormat.webp, 80)
    assert translate(prompt="x", output_format="jpg").output_format is OutputFormat.jpeg
    png = translate(prompt="x", output_format="png", output_quality=80)
    assert (png.output_format, png.output_quality) == (OutputFormat.png, None)  # quality means nothing for PNG


def test_image_and_mask_choose_the_mode_and_the_size_comes_from_the_image():
    img2img = translate(prompt="x", image="u", width=1024, height=1024, prompt_strength=0.6, image_png=b"png")
    assert (img2img.mode, img2img.width, img2img.height, img2img.strength) == (Mode.img2img, None, None, 0.6)
    inpaint = translate(prompt="x", image="u", mask="m", image_png=b"png", mask_png=b"mask")
    assert inpaint.mode is Mode.inpaint and inpaint.strength is None
    assert translate(prompt="x", prompt_strength=0.3).strength is None  # ignored without an image
    with pytest.raises(InvalidRequest) as lone_mask:
        translate(prompt="x", mask="m")
    assert lone_mask.value.param == "input.mask"


def test_refine_uses_the_server_refiner_with_high_noise_frac():
    request = translate(server_refiner="my-refiner", prompt="x", refine="expert_ensemble_refiner",
                        high_noise_frac=0.7)
    assert (request.refiner.name, request.refiner.switch_at) == ("my-refiner", 0.7)
    assert translate(server_refiner="my-refiner", prompt="x", refine="no_refiner").refiner is None
    for refine, server in (("expert_ensemble_refiner", None), ("base_image_refiner", "my-refiner")):
        with pytest.raises(InvalidRequest) as refused:
            translate(server_refiner=server, prompt="x", refine=refine)
        assert refused.value.param == "input.refine"


def test_lora_scale_weights_the_named_lora_and_alone_does_nothing():
    request = translate(prompt="x", lora="style", lora_scale=0.6)
    assert [(lora.name, lora.weight) for lora in request.loras] == [("style", 0.6)]
    assert translate(prompt="x", lora_scale=0.6).loras == ()


def test_hosted_only_fields_are_accepted_and_unknown_ones_name_the_field():
    body = PredictionCreate(version="v", input={"prompt": "x", "apply_watermark": False, "go_fast": True,
                                                "disable_safety_checker": True, "refine_steps": 10})
    assert body.parsed_input().prompt == "x"
    with pytest.raises(InvalidRequest) as unknown:
        PredictionCreate(version="v", input={"prompt": "x", "strenght": 0.5}).parsed_input()
    assert unknown.value.param == "input.strenght" and "unknown input" in unknown.value.message
    with pytest.raises(InvalidRequest) as typed:
        PredictionCreate(version="v", input={"num_outputs": True}).parsed_input()
    assert typed.value.param == "input.num_outputs"


def test_webhook_event_filters_map_to_job_events():
    assert PredictionCreate(webhook="https://h/x").webhook_target() == ("https://h/x", ("completed",))
    target = PredictionCreate(webhook="https://h/x", webhook_events_filter=["start", "logs", "output", "completed"])
    assert target.webhook_target() == ("https://h/x", ("started", "progress", "completed"))
    assert PredictionCreate(webhook_completed="https://h/y").webhook_target() == ("https://h/y", ("completed",))
    assert PredictionCreate().webhook_target() is None


@pytest.mark.parametrize(("prefer", "seconds"), [
    (None, 20), ("wait", 60), ("wait=5", 5), ("wait=600", 60), ("wait=0", 1), ("respond-async", None),
    ("respond-async, wait=3", 3),
])
def test_prefer_wait(prefer, seconds):
    assert wait_seconds(prefer) == seconds


def test_cancel_after_durations():
    assert [duration_seconds(text) for text in ("30s", "5m", "1h", "250ms", "12")] == [30, 300, 3600, 0.25, 12]
    for bad in ("soon", "-1s", "0"):
        with pytest.raises(InvalidRequest) as refused:
            duration_seconds(bad)
        assert refused.value.param == "Cancel-After"

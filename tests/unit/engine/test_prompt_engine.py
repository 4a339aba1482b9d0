"""Prompt syntax through the engine: weighting, long prompts, LoRA tags, batching by length."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pixelmill.core.types import GenerationRequest, LoraSpec  # noqa: E402
from pixelmill.core.policy import prepare_request  # noqa: E402
from tests.support.images import assert_same_image, decode, pixels  # noqa: E402

LONG = ", ".join(f"detail number {i} in warm light" for i in range(40))


def request(settings, **fields) -> GenerationRequest:
    base = {"prompt": "a red cat", "width": 64, "height": 64, "steps": 2, "seed": 9}
    return prepare_request(GenerationRequest(**(base | fields)), settings)


def image(engine, settings, **fields) -> np.ndarray:
    return pixels(decode(engine.generate(request(settings, **fields)).images[0].data))


def test_weighting_changes_the_image_and_weight_one_does_not(engine, settings):
    plain = image(engine, settings)
    assert not np.array_equal(image(engine, settings, prompt="a (red:1.6) cat"), plain)
    assert np.abs(image(engine, settings, prompt="a (red:1.0) cat") - plain).max() <= 2


def test_a_long_prompt_uses_its_tail(engine, settings):
    long = image(engine, settings, prompt=LONG)
    assert not np.array_equal(long, image(engine, settings, prompt=LONG + ", and a blue moon"))


def test_lora_tag_in_the_prompt_equals_the_loras_field(engine, settings):
    tagged = request(settings, prompt="a red cat <lora:demo-style:0.8>")
    assert tagged.prompt == "a red cat"
    assert tagged.loras == (LoraSpec(name="demo-style", weight=0.8),)
    field = request(settings, loras=(LoraSpec(name="demo-style", weight=0.8),))
    assert np.array_equal(pixels(decode(engine.generate(tagged).images[0].data)),
                          pixels(decode(engine.generate(field).images[0].data)))


def test_prompts_of_different_lengths_batch_like_alone(engine, settings):
    short, long = request(settings, seed=1), request(settings, prompt=LONG, seed=2)
    together = engine.generate_batch([short, long])
    for alone, batched in zip((engine.generate(short), engine.generate(long)), together):
        assert_same_image(decode(batched.images[0].data), decode(alone.images[0].data))

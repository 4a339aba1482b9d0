"""The engine end to end on the tiny demo model: seeds, progress, cancellation, metadata."""

from __future__ import annotations

import asyncio
import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pixelmill.core.types import GenerationRequest, Mode  # noqa: E402
from pixelmill.images.codecs import reencode_png  # noqa: E402
from tests.support.infotext import parse_a1111_parameters, read_parameters  # noqa: E402
from pixelmill.engine.runner import CancelToken, EngineRunner  # noqa: E402
from pixelmill.core.errors import GenerationCanceled  # noqa: E402
from pixelmill.registry.models_dir import ModelRegistry  # noqa: E402
from tests.support.images import assert_same_image, decode, gradient, pixels  # noqa: E402


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 5} | fields))


def test_progress_reports_every_step(engine):
    steps = []
    engine.generate(request(steps=3), on_progress=lambda step, total: steps.append((step, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_cancel_stops_between_steps(engine):
    steps = []

    def progress(step, total):
        steps.append(step)

    with pytest.raises(GenerationCanceled):
        engine.generate(request(steps=10), on_progress=progress, is_canceled=lambda: len(steps) >= 2)
    assert steps == [1, 2]


def test_metadata_names_sampler_seed_and_model(engine):
    result = engine.generate(request(scheduler="DPM++ 2M Karras", n=2, guidance=7.5))
    fields = [parse_a1111_parameters(read_parameters(img.data)) for img in result.images]
    assert [f["Seed"] for f in fields] == ["5", "6"]
    assert (fields[0]["Sampler"], fields[0]["Schedule type"]) == ("DPM++ 2M", "Karras")  # A1111 >= 1.9
    assert fields[0]["CFG scale"] == "7.5" and fields[0]["Model"] == "demo"
    assert result.sampler == "DPM++ 2M Karras" and result.gpu_seconds > 0


def test_clip_skip_and_negative_prompt_change_the_image(engine):
    base = pixels(decode(engine.generate(request()).images[0].data))
    skipped = pixels(decode(engine.generate(request(clip_skip=1)).images[0].data))
    negative = pixels(decode(engine.generate(request(negative_prompt="dog")).images[0].data))
    assert not np.array_equal(base, skipped)
    assert not np.array_equal(base, negative)


def test_img2img_uses_the_image_and_the_strength(engine):
    # Random weights make "closer to the input" meaningless (the VAE itself scrambles);
    # what must hold is that both the input image and the strength reach the pipeline.
    def run(image, strength):
        out = engine.generate(request(mode=Mode.img2img, init_image=reencode_png(image), strength=strength, steps=4))
        return pixels(decode(out.images[0].data))

    light, dark = gradient(64, 64), gradient(64, 64).point(lambda v: v // 4)
    assert not np.array_equal(run(light, 0.5), run(dark, 0.5))
    assert not np.array_equal(run(light, 0.5), run(light, 1.0))
    assert np.array_equal(run(light, 0.5), run(light, 0.5))


def test_runner_runs_requests_one_at_a_time_off_the_loop(settings):
    runner = EngineRunner(settings, ModelRegistry(settings.models_dir))
    runner.start().result()

    async def many():
        return await asyncio.gather(*(runner.generate(request(seed=s)) for s in (1, 2, 1)))

    first, second, again = asyncio.run(many())
    assert first.images[0].data == again.images[0].data != second.images[0].data
    runner.shutdown()


def test_runner_cancel_token(settings):
    runner = EngineRunner(settings, ModelRegistry(settings.models_dir))
    runner.start().result()
    token = CancelToken()

    async def canceled():
        def progress(p):
            token.cancel()

        return await runner.generate(request(steps=20), on_progress=progress, cancel=token)

    with pytest.raises(GenerationCanceled):
        asyncio.run(canceled())
    runner.shutdown()


def test_a_batch_makes_the_same_images_as_separate_calls(engine):
    requests = [
        request(prompt="a red cube", seed=11, n=2),
        request(prompt="a blue ball", seed=3, negative_prompt=""),
        request(prompt="a green cone", seed=4000000000),
    ]
    batched = engine.generate_batch(requests)
    for req, result in zip(requests, batched):
        alone = engine.generate(req)
        assert [img.seed for img in result.images] == [img.seed for img in alone.images]
        for a, b in zip(result.images, alone.images):
            assert_same_image(decode(a.data), decode(b.data))


def test_batch_gpu_seconds_are_shared_by_images(engine):
    started = time.perf_counter()
    results = engine.generate_batch([request(n=3, seed=1), request(n=1, seed=2)])
    wall = time.perf_counter() - started
    assert results[0].gpu_seconds == pytest.approx(3 * results[1].gpu_seconds)
    assert sum(r.gpu_seconds for r in results) <= wall


def test_batch_with_negative_prompts_matches_alone(engine):
    requests = [request(negative_prompt="dog", seed=5), request(negative_prompt="cat, blurry", seed=6, prompt="b")]
    for req, result in zip(requests, engine.generate_batch(requests)):
        assert_same_image(decode(result.images[0].data), decode(engine.generate(req).images[0].data))

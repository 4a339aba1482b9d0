"""Issue 19 §7 at the engine: bounded emphasis keeps images finite; a refiner as ``model``
is refused without unloading the model in use. The tiny demo model, on the CPU."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub are imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pixelmill.core.errors import InvalidRequest  # noqa: E402
from pixelmill.core.prompt_syntax import MAX_EMPHASIS_WEIGHT  # noqa: E402
from pixelmill.core.types import GenerationRequest  # noqa: E402
from pixelmill.engine.demo import DEMO_REFINER_NAME  # noqa: E402
from pixelmill.engine.prompts import _check_finite, encode_prompts  # noqa: E402

# Everything at once at its bound: 16 nested "(" (4.59) and the largest explicit weight.
BOUNDED = "(" * 16 + "a red cat" + ")" * 16 + f", (on the mat:{MAX_EMPHASIS_WEIGHT:g}), [[[[photo]]]]"
HOSTILE = "(" * 1900 + "a red cat" + ")" * 1900  # 1.1^1900 = inf before the bounds


def _request(**fields) -> GenerationRequest:
    base = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 3}
    return GenerationRequest(**(base | fields))


@pytest.fixture(scope="module")
def pipe(engine):
    return engine._models.get(engine.model_for(None)).pipes.base


def test_emphasis_at_its_bounds_gives_finite_embeddings_and_a_finite_image(pipe):
    embeds = encode_prompts(pipe, [BOUNDED], [BOUNDED])
    for tensor in embeds.pipeline_kwargs().values():
        assert torch.isfinite(tensor).all()
    pipe.set_progress_bar_config(disable=True)
    image = pipe(**embeds.pipeline_kwargs(), width=64, height=64, num_inference_steps=2, guidance_scale=5.0,
                 generator=torch.Generator("cpu").manual_seed(1), output_type="np").images[0]
    assert np.isfinite(image).all()


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_unbounded_emphasis_is_refused_before_the_unet(engine, field):
    with pytest.raises(InvalidRequest, match="nest more than") as caught:
        engine.generate(_request(**{field: HOSTILE}))
    assert caught.value.param == field


def test_non_finite_embeddings_are_refused(pipe):
    _check_finite("prompt", torch.zeros(1, 2))
    with pytest.raises(InvalidRequest) as caught:
        _check_finite("negative_prompt", torch.zeros(1, 2), torch.tensor([[0.0, float("nan")]]))
    assert caught.value.param == "negative_prompt"


def test_a_refiner_as_model_is_refused_and_unloads_nothing(engine):
    engine.generate(_request())  # the default model is loaded
    before = engine.loaded_models
    with pytest.raises(InvalidRequest, match="refiner") as caught:
        engine.generate(_request(model=DEMO_REFINER_NAME))
    assert caught.value.param == "model"
    assert engine.loaded_models == before == ["demo"]

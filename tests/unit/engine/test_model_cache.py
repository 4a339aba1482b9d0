"""Several checkpoints: a request's model picks one; loaded models live in an LRU within a budget."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import shutil  # noqa: E402
import weakref  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pixelmill.core.types import GenerationRequest  # noqa: E402
from pixelmill.engine.engine import Engine  # noqa: E402
from pixelmill.core.errors import NotFound  # noqa: E402
from tests.support.engines import make_engine  # noqa: E402
from tests.support.images import decode, pixels  # noqa: E402
from tests.support.memory import alive, live_parameters  # noqa: E402


@pytest.fixture(scope="module")
def models(demo_models, tmp_path_factory):
    """The demo models plus two more checkpoints (copies of the demo under other names)."""
    root = tmp_path_factory.mktemp("many-models")
    shutil.copytree(demo_models, root, dirs_exist_ok=True)
    for name in ("second", "third"):
        shutil.copytree(root / "checkpoints" / "demo", root / "checkpoints" / name)
    return root


def _engine(models, tmp_path_factory, **settings) -> Engine:
    return make_engine(models, tmp_path_factory, **settings)


def generate(engine: Engine, model: str | None):
    return engine.generate(GenerationRequest(prompt="a cat", model=model, width=64, height=64, steps=1, seed=2))


def test_the_request_picks_the_checkpoint(models, tmp_path_factory):
    engine = _engine(models, tmp_path_factory)
    result = generate(engine, "second")
    assert result.model == "second"
    assert engine.loaded_models == ["second"]  # budget 0: the default was freed first
    # Same weights under another name: the same image.
    assert np.array_equal(pixels(decode(result.images[0].data)), pixels(decode(generate(engine, None).images[0].data)))
    assert engine.loaded_models == ["demo"]


def test_models_stay_loaded_within_the_budget(models, tmp_path_factory):
    engine = _engine(models, tmp_path_factory, model_cache_gb=1.0)
    for name in ("second", "third", None, "second"):
        generate(engine, name)
    assert engine.loaded_models == ["third", "demo", "second"]


def test_the_least_recently_used_model_goes_first(models, tmp_path_factory):
    engine = _engine(models, tmp_path_factory)
    one = engine._models.get(engine.model_for(None)).nbytes
    engine._models.budget_bytes = int(one * 2.5)  # room for two
    unets = {}
    for name in ("second", None, "third"):
        generate(engine, name)
        unets[name] = weakref.ref(engine._models.get(engine.model_for(name)).pipes.base.unet)
    assert engine.loaded_models == ["demo", "third"]
    assert len(alive([unets["second"]])) == 0, "the evicted model is still alive"


def test_an_unknown_model_names_its_parameter(models, tmp_path_factory):
    engine = _engine(models, tmp_path_factory)
    with pytest.raises(NotFound) as caught:
        generate(engine, "nope")
    assert caught.value.param == "model"


def test_switching_models_frees_the_model_switched_away_from(models, tmp_path_factory):
    """Budget 0, two checkpoints in turn: only the model in use stays loaded, and alive.

    Counts what a leak would leave, not RSS (``python -m bench.soak`` measures RSS drift):
    the UNet of every model loaded (weak references: alive only if something still holds
    it) and every ``nn.Parameter`` in the process, so a model that was unloaded from the
    cache but is still referenced from anywhere fails here.
    """
    engine = _engine(models, tmp_path_factory)
    names = ["second", None]
    unets = []
    generate(engine, None)
    live = live_parameters()  # one model loaded
    for i in range(2):  # away and back: each switch frees the model it leaves
        generate(engine, names[i % 2])
        assert engine.loaded_models == [names[i % 2] or "demo"]
        unets.append(weakref.ref(engine._models.get(engine.model_for(names[i % 2])).pipes.base.unet))
    assert len(alive(unets[:-1])) == 0, "the model unloaded by the first switch is still alive"
    assert live_parameters() == live, "parameters of unloaded models are still alive"

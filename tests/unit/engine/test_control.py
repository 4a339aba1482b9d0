"""ControlNet preprocessing (canny, invert, none) and the ControlNet model cache."""

from __future__ import annotations

import gc
import io
import os
import shutil
import weakref

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub are imported

import numpy as np
import pytest
import torch
from PIL import Image

from pixelmill.core.types import Mode, Preprocess
from pixelmill.engine.control import ControlNetCache, preprocess
from pixelmill.core.errors import InvalidRequest, ModelUnavailable, NotFound
from pixelmill.registry.models_dir import ModelRegistry


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _rectangle(size=(64, 64), box=(16, 20, 48, 44)) -> Image.Image:
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), box)
    return image


# --- preprocessing -----------------------------------------------------------------------


def test_canny_is_an_edge_map_of_the_input():
    left, top, right, bottom = 16, 20, 48, 44
    out = np.asarray(preprocess(_png(_rectangle()), Preprocess.canny, (64, 64)))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 255}  # white edges on black
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    edges = out[..., 0] > 0
    # Every side of the rectangle is traced (within a pixel of its boundary) ...
    assert edges[top - 1:top + 1, left + 2:right - 2].any(axis=0).all()
    assert edges[bottom - 1:bottom + 1, left + 2:right - 2].any(axis=0).all()
    assert edges[top + 2:bottom - 2, left - 1:left + 1].any(axis=1).all()
    assert edges[top + 2:bottom - 2, right - 1:right + 1].any(axis=1).all()
    # ... and flat regions, inside and outside, have no edges at all.
    assert not edges[top + 3:bottom - 3, left + 3:right - 3].any()
    assert not edges[:top - 3].any() and not edges[bottom + 3:].any()
    assert not edges[:, :left - 3].any() and not edges[:, right + 3:].any()


def test_canny_runs_after_resizing_so_edges_follow_the_output_size():
    out = np.asarray(preprocess(_png(_rectangle((32, 32), (8, 8, 24, 24))), Preprocess.canny, (96, 64)))
    assert out.shape == (64, 96, 3)
    edges = out[..., 0] > 0
    assert edges[:, 22:26].any() and edges[:, 70:74].any()  # the scaled sides, x = 24 and 72
    assert not edges[25:39, 28:68].any()


def test_invert_inverts_rgb_and_none_passes_through():
    pixels = (np.random.RandomState(3).rand(40, 56, 3) * 255).astype("uint8")
    png = _png(Image.fromarray(pixels))
    inverted = preprocess(png, Preprocess.invert, (56, 40))
    assert inverted.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(inverted), 255 - pixels)
    np.testing.assert_array_equal(np.asarray(preprocess(png, Preprocess.none, (56, 40))), pixels)


@pytest.mark.parametrize("kind", list(Preprocess))
@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_every_kind_gives_rgb_at_the_requested_size(kind, mode):
    image = _rectangle((50, 30)).convert(mode)
    out = preprocess(_png(image), kind, (128, 72))
    assert out.mode == "RGB" and out.size == (128, 72)


# --- the cache ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def control_dir(models_dir, tmp_path_factory):
    """A models directory with three copies of the demo ControlNet, a misfit and a broken one."""
    from diffusers import ControlNetModel

    root = tmp_path_factory.mktemp("controlnets")
    demo = models_dir / "controlnets" / "demo-canny"
    for name in ("cn-a", "cn-b", "cn-c", "broken"):
        shutil.copytree(demo, root / "controlnets" / name)
    (root / "controlnets" / "broken" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    config = dict(ControlNetModel.load_config(demo))
    config["cross_attention_dim"] = 40  # a ControlNet for a base with other text encoders
    ControlNetModel.from_config(config).save_pretrained(root / "controlnets" / "other-base")
    return root


@pytest.fixture
def cache(control_dir, cpu):
    registry = ModelRegistry(control_dir)
    registry.refresh()
    cache = ControlNetCache(registry, cpu, capacity=2)
    yield cache
    cache.close()


def test_same_names_give_the_same_object(cache, pipes):
    from diffusers import ControlNetModel, MultiControlNetModel

    unet = pipes.base.unet.config
    one = cache.get(("cn-a",), unet)
    assert isinstance(one, ControlNetModel) and cache.get(("cn-a",), unet) is one
    assert one.dtype == torch.float32 and one.device.type == "cpu"
    multi = cache.get(("cn-a", "cn-b"), unet)
    assert isinstance(multi, MultiControlNetModel)
    assert multi.nets[0] is one and multi.nets[1] is cache.get(("cn-b",), unet)
    assert cache.get(("cn-a", "cn-b"), unet) is multi
    assert cache.get(("cn-b", "cn-a"), unet) is not multi  # order pairs images with nets


def test_least_recently_used_is_evicted_and_freed(cache, pipes):
    unet = pipes.base.unet.config
    first = weakref.ref(cache.get(("cn-a",), unet))
    multi = weakref.ref(cache.get(("cn-a", "cn-b"), unet))
    cache.get(("cn-a",), unet)  # a is now more recent than b
    cache.get(("cn-c",), unet)
    assert cache.loaded == ("cn-a", "cn-c")
    gc.collect()
    assert first() is not None and multi() is None  # the wrapper held the evicted b
    cache.get(("cn-b",), unet)
    assert cache.loaded == ("cn-c", "cn-b")
    gc.collect()
    assert first() is None


def test_one_request_may_exceed_the_capacity(cache, pipes):
    multi = cache.get(("cn-a", "cn-b", "cn-c"), pipes.base.unet.config)
    assert len(multi.nets) == 3 and cache.loaded == ("cn-a", "cn-b", "cn-c")
    cache.get(("cn-a",), pipes.base.unet.config)
    assert cache.loaded == ("cn-c", "cn-a")


def test_unknown_name_is_not_found_naming_the_param(cache, pipes):
    with pytest.raises(NotFound) as err:
        cache.get(("cn-a", "nope"), pipes.base.unet.config)
    assert err.value.param == "controlnets[1].name"
    with pytest.raises(InvalidRequest) as err:
        cache.get(("../cn-a",), pipes.base.unet.config)
    assert err.value.param == "controlnets[0].name"


def test_a_controlnet_for_another_base_is_refused(cache, pipes):
    with pytest.raises(InvalidRequest) as err:
        cache.get(("cn-a", "other-base"), pipes.base.unet.config)
    assert err.value.param == "controlnets[1].name" and "cross_attention_dim" in err.value.message


def test_unloadable_files_are_model_unavailable(cache, pipes):
    with pytest.raises(ModelUnavailable) as err:
        cache.get(("broken",), pipes.base.unet.config)
    assert err.value.param == "controlnets[0].name" and "broken" in err.value.message


def test_close_frees_everything(cache, pipes):
    model = weakref.ref(cache.get(("cn-a",), pipes.base.unet.config))
    cache.close()
    gc.collect()
    assert model() is None and cache.loaded == ()


def test_multi_controlnet_runs_through_the_pipeline_set(cache, pipes):
    """Two ControlNets with per-net images, scales and schedules (the integrator's kwargs)."""
    multi = cache.get(("cn-a", "cn-b"), pipes.base.unet.config)
    pipe = pipes.get_controlnet(Mode.txt2img, multi)
    assert pipe.unet is pipes.base.unet and pipe.controlnet is multi
    hint = preprocess(_png(_rectangle()), Preprocess.canny, (64, 64))

    def run(scales):
        return pipe("a box", image=[hint, preprocess(_png(_rectangle()), Preprocess.invert, (64, 64))],
                    controlnet_conditioning_scale=scales, control_guidance_start=[0.0, 0.5],
                    control_guidance_end=[1.0, 1.0], num_inference_steps=2, width=64, height=64,
                    output_type="np", generator=torch.Generator().manual_seed(3)).images

    plain = pipes.base("a box", num_inference_steps=2, width=64, height=64, output_type="np",
                       generator=torch.Generator().manual_seed(3)).images
    np.testing.assert_array_equal(run([0.0, 0.0]), plain)
    assert np.abs(run([1.0, 0.5]) - plain).max() > 0.05

"""The batch key: what may share a pipeline call, and what may not."""

from __future__ import annotations

import pytest
from PIL import Image

from pixelmill.core.batching import Arrivals, batch_key
from pixelmill.core.policy import resolve
from pixelmill.core.types import ControlSpec, GenerationRequest, LoraSpec, Mode
from pixelmill.images.codecs import reencode_png
from pixelmill.settings import Settings
from tests.support.images import gradient

POLICY = Settings().policy()


def request(**fields) -> GenerationRequest:
    """A resolved request, as the job store keeps it (the key reads resolved fields)."""
    base = {"prompt": "a", "width": 64, "height": 64, "steps": 2, "seed": 1}
    return resolve(GenerationRequest(**(base | fields)), POLICY)


def test_prompts_seeds_n_and_formats_do_not_split_a_batch():
    base = batch_key(request())
    assert batch_key(request(prompt="something else", seed=99, n=3, output_format="webp", mask_blur=9)) == base
    assert batch_key(request(negative_prompt="x")) == batch_key(request(negative_prompt="y"))


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"}, {"width": 128, "height": 64}, {"steps": 3}, {"guidance": 6.0},
        {"scheduler": "euler_a"}, {"clip_skip": 2}, {"negative_prompt": "blurry"},
        {"loras": (LoraSpec(name="style", weight=0.5),)},
        {"mode": Mode.img2img, "init_image": reencode_png(gradient(64, 64))},
    ],
)
def test_anything_shaping_the_call_splits_a_batch(change):
    assert batch_key(request(**change)) != batch_key(request())


def test_sampler_aliases_batch_together():
    assert batch_key(request(scheduler="DPM++ 2M Karras")) == batch_key(request(scheduler="dpmpp_2m_karras"))


def test_img2img_size_from_the_image_counts():
    small = request(mode=Mode.img2img, init_image=reencode_png(gradient(64, 64)), width=None, height=None)
    large = request(mode=Mode.img2img, init_image=reencode_png(gradient(128, 64)), width=None, height=None)
    assert batch_key(small) != batch_key(large)
    assert batch_key(small)[2] == (64, 64)


def test_the_key_reads_the_resolved_size_and_never_opens_the_image():
    upload = reencode_png(Image.new("RGB", (3000, 3000)))
    resolved = request(mode=Mode.img2img, init_image=upload, width=None, height=None)
    assert batch_key(resolved)[2] == (2048, 2048)  # fitted by the policy, not the image's own size
    assert batch_key(resolved.model_copy(update={"init_image": b"not even an image"})) == batch_key(resolved)


def test_an_unsized_img2img_request_runs_alone():
    """Queued before sizes were resolved: its size is unknown here, so it batches with nobody."""
    unsized = GenerationRequest(prompt="a", mode=Mode.img2img, init_image=reencode_png(gradient(64, 64)))
    assert batch_key(unsized) != batch_key(unsized)


def test_controlnet_requests_run_alone():
    control = (ControlSpec(name="demo-canny", image=b"png"),)
    assert batch_key(request(controlnets=control)) != batch_key(request(controlnets=control))


def test_one_at_a_time_arrivals_start_without_waiting_for_company():
    arrivals = Arrivals(gap_s=0.05, sample=4)
    assert arrivals.expect_company()  # no history: wait, a burst may be starting
    for second in range(4):
        arrivals.add([float(second)])
        assert arrivals.expect_company()  # still too few gaps to judge
    arrivals.add([4.0])
    assert not arrivals.expect_company()  # four gaps of 1 s: a single client's rhythm


def test_a_close_pair_among_recent_arrivals_brings_the_wait_back():
    arrivals = Arrivals(gap_s=0.05, sample=4)
    arrivals.add([0.0, 1.0, 2.0, 3.0, 4.0])
    arrivals.add([4.01])  # a second client joins
    assert arrivals.expect_company()
    arrivals.add([5.0, 6.0, 7.0])
    assert arrivals.expect_company()  # the close pair is still among the last four gaps
    arrivals.add([8.0])
    assert not arrivals.expect_company()  # it has aged out


def test_jobs_claimed_together_count_as_company():
    arrivals = Arrivals(gap_s=0.05, sample=2)
    arrivals.add([0.0, 10.0])
    arrivals.add([20.0, 20.0])
    assert arrivals.expect_company()

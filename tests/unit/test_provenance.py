"""What made an image is recorded: A1111 infotext and the batch manifest."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pixelmill.core.types import (
    ControlSpec, GenerationRequest, JobRecord, JobStatus, LoraSpec, Mode, Preprocess, RefinerSpec,
)
from pixelmill.core.samplers import SCHEDULERS, sampler_label
from pixelmill.images.codecs import generation_infotext
from pixelmill.images.schedules import split_sampler_label
from pixelmill.jobs.archive import job_parameters
from tests.support.infotext import parse_a1111_parameters

FULL = GenerationRequest(
    prompt="a lighthouse", negative_prompt="blurry", steps=4, guidance=7.5, seed=3, width=64, height=64,
    clip_skip=1, loras=(LoraSpec(name="demo-style", weight=0.8), LoraSpec(name="ink", weight=1.0)),
    controlnets=(ControlSpec(name="demo-canny", image=b"", scale=0.5, start=0.1, end=0.9,
                             preprocess=Preprocess.canny),
                 ControlSpec(name="depth", image=b"")),
    refiner=RefinerSpec(name="demo-refiner", switch_at=0.8),
)


def infotext(request: GenerationRequest) -> dict[str, str]:
    text = generation_infotext(request, model="demo", sampler="Euler a", seed=3, width=64, height=64,
                               version="pixelmill test")
    return parse_a1111_parameters(text)


def test_infotext_carries_loras_controlnets_refiner_in_a1111_form():
    fields = infotext(FULL)
    assert fields["prompt"] == "a lighthouse <lora:demo-style:0.8> <lora:ink:1>"
    assert fields["negative_prompt"] == "blurry"
    assert fields["ControlNet 0"] == (
        "Module: canny, Model: demo-canny, Weight: 0.5, Guidance Start: 0.1, Guidance End: 0.9")
    assert fields["ControlNet 1"] == (
        "Module: none, Model: depth, Weight: 1, Guidance Start: 0, Guidance End: 1")
    assert (fields["Refiner"], fields["Refiner switch at"]) == ("demo-refiner", "0.8")
    assert (fields["Steps"], fields["Sampler"], fields["Schedule type"], fields["CFG scale"], fields["Model"]) == (
        "4", "Euler a", "Automatic", "7.5", "demo")


@pytest.mark.parametrize(("clip_skip", "a1111"), [(None, None), (1, "2"), (2, "3"), (11, "12")])
def test_clip_skip_is_written_in_a1111_counting(clip_skip, a1111):
    # diffusers' clip_skip k uses hidden_states[-(k + 1)]; A1111's "Clip skip: N" uses
    # hidden_states[-N] and is omitted at 1 (the last layer).
    fields = infotext(GenerationRequest(prompt="x", steps=2, guidance=7, clip_skip=clip_skip))
    assert fields.get("Clip skip") == a1111


def test_settings_line_is_a1111_1_9s_exact_format():
    request = GenerationRequest(prompt="a lighthouse", mode=Mode.img2img, steps=2, guidance=7, strength=0.5,
                                clip_skip=1)
    text = generation_infotext(request, model="demo", sampler="DPM++ 2M Karras", seed=3, width=64, height=48,
                               version="pixelmill test")
    assert text == ("a lighthouse\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3, "
                    "Size: 64x48, Model: demo, Denoising strength: 0.5, Clip skip: 2, Version: pixelmill test")


@pytest.mark.parametrize(("label", "pair"), [
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
    ("DPM++ 2M", ("DPM++ 2M", "Uniform")),           # A1111's Automatic would have been Karras
    ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
    ("Euler Karras", ("Euler", "Karras")),
    ("Euler a", ("Euler a", "Automatic")),           # the sampler's own sigmas
    ("euler_a", ("Euler a", "Automatic")),           # a backend reporting pixelmill's id
    ("FancyScheduler", ("FancyScheduler", "Automatic")),
])
def test_sampler_and_schedule_type_are_written_apart(label, pair):
    fields = infotext_for(label)
    assert (fields["Sampler"], fields["Schedule type"]) == pair


def infotext_for(sampler: str) -> dict[str, str]:
    text = generation_infotext(GenerationRequest(prompt="x", steps=2, guidance=7), model="demo", sampler=sampler,
                               seed=3, width=64, height=64, version="pixelmill test")
    return parse_a1111_parameters(text)


def test_infotext_of_a_plain_request_has_no_adapter_pairs():
    fields = infotext(GenerationRequest(prompt="a lighthouse", steps=2, guidance=7))
    assert fields["prompt"] == "a lighthouse"
    assert not any(key.startswith(("ControlNet", "Refiner", "Clip skip")) for key in fields)


def test_tags_alone_when_the_prompt_is_empty():
    request = GenerationRequest(prompt="", mode=Mode.img2img, steps=2, guidance=7, strength=0.5,
                                loras=(LoraSpec(name="ink", weight=-0.25),))
    assert infotext(request)["prompt"] == "<lora:ink:-0.25>"


def _job(request: GenerationRequest, **fields) -> JobRecord:
    return JobRecord(**{
        "id": "job_x", "status": JobStatus.succeeded, "request": request, "created_at": datetime.now(timezone.utc),
        "mode": request.mode, "steps": 4, **fields,
    })


def test_manifest_parameters_name_what_ran():
    request = FULL.model_copy(update={"model": None, "scheduler": None, "width": None, "height": None})
    params = job_parameters(_job(request, model="demo", sampler="Euler a", width=64, height=48))
    assert (params["model"], params["sampler"], params["scheduler"]) == ("demo", "Euler a", "euler_a")
    assert (params["width"], params["height"], params["clip_skip"]) == (64, 48, 1)
    assert params["loras"] == [{"name": "demo-style", "weight": 0.8}, {"name": "ink", "weight": 1.0}]
    assert params["refiner"] == {"name": "demo-refiner", "switch_at": 0.8}
    assert params["controlnets"][0] == {"name": "demo-canny", "scale": 0.5, "start": 0.1, "end": 0.9,
                                        "preprocess": "canny"}


def test_manifest_keeps_an_asked_scheduler_and_skips_unknown_labels():
    asked = job_parameters(_job(FULL.model_copy(update={"scheduler": "ddim"}), model="demo", sampler="DDIM"))
    assert asked["scheduler"] == "ddim"
    odd = job_parameters(_job(FULL, model="demo", sampler="SomeCustomScheduler"))
    assert odd["scheduler"] is None and odd["sampler"] == "SomeCustomScheduler"

"""A1111 >= 1.9 sampler + schedule resolution, and the label a job ran with read back."""

from __future__ import annotations

import pytest

from pixelmill.api.a1111.samplers import SAMPLERS, find_schedule, resolve_sampler, supported_samplers
from pixelmill.core.samplers import SCHEDULERS
from pixelmill.images.schedules import split_sampler_label
from pixelmill.core.errors import InvalidRequest, NotFound


@pytest.mark.parametrize(("sampler", "scheduler", "canonical"), [
    ("DPM++ 2M", "karras", "dpmpp_2m_karras"),           # SillyTavern: lower-case schedule name
    ("DPM++ 2M", "Karras", "dpmpp_2m_karras"),           # the label
    ("DPM++ 2M", "automatic", "dpmpp_2m_karras"),        # the sampler's default schedule
    ("DPM++ 2M", None, "dpmpp_2m_karras"),
    ("DPM++ 2M", "uniform", "dpmpp_2m"),
    ("DPM++ 2M Karras", None, "dpmpp_2m_karras"),        # combined legacy name
    ("DPM++ 2M Karras", "uniform", "dpmpp_2m_karras"),   # a schedule in the name wins over the field
    ("dpm++ 2m karras", "", "dpmpp_2m_karras"),          # any case
    ("k_dpmpp_2m", "Karras", "dpmpp_2m_karras"),         # an alias
    ("Euler a", "automatic", "euler_a"),                 # webuiapi's default pair
    ("Euler", None, "euler"),
    ("DDIM", "automatic", "ddim"),
    ("DPM++ 2M SDE", "automatic", "dpmpp_2m_sde_exponential"),  # A1111's default for it
    ("DPM++ 2M SDE Karras", None, "dpmpp_2m_sde_karras"),
    ("Euler", "karras", "euler_karras"),
    ("DPM++ SDE", "automatic", "dpmpp_sde_karras"),
])
def test_resolution(sampler, scheduler, canonical):
    assert resolve_sampler(sampler, scheduler)[0] == canonical


def test_unknown_sampler_is_404_sampler_not_found():
    with pytest.raises(NotFound) as raised:
        resolve_sampler("Not A Sampler", None)
    assert raised.value.message == "Sampler not found" and raised.value.param == "sampler_name"


def test_known_sampler_this_server_cannot_run_is_400_naming_sampler_name():
    with pytest.raises(InvalidRequest) as raised:
        resolve_sampler("DPM adaptive", None)
    assert raised.value.param == "sampler_name" and "available" in raised.value.message


def test_schedule_the_sampler_cannot_use_is_400_naming_scheduler():
    with pytest.raises(InvalidRequest) as raised:
        resolve_sampler("Euler a", "Karras")
    assert raised.value.param == "scheduler"
    with pytest.raises(InvalidRequest) as raised:
        find_schedule("wobbly")
    assert raised.value.param == "scheduler"


def test_no_sampler_means_the_model_default_unless_a_schedule_is_forced():
    assert resolve_sampler(None, "automatic")[0] is None
    with pytest.raises(InvalidRequest):
        resolve_sampler(None, "karras")


@pytest.mark.parametrize(("label", "pair"), [
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
    ("DPM++ 2M", ("DPM++ 2M", "Uniform")),
    ("Euler a", ("Euler a", "Automatic")),
    ("euler", ("Euler", "Automatic")),          # a backend reporting pixelmill's own id
    ("Something Else", ("Something Else", "Automatic")),
])
def test_split_label(label, pair):
    assert split_sampler_label(label) == pair


def test_every_sampler_and_schedule_comes_back_from_the_label_it_runs_as():
    """resolve (A1111's pair → pixelmill's scheduler) and the infotext's split agree: the
    ``info`` a client reads names what it asked for (Automatic where A1111 writes it)."""
    checked = 0
    for sampler in SAMPLERS:
        for schedule, canonical in sampler.runs.items():
            expected = "Automatic" if schedule == "uniform" and sampler.default is None else \
                find_schedule(schedule).label
            assert split_sampler_label(SCHEDULERS[canonical].label) == (sampler.name, expected), (sampler, schedule)
            checked += 1
    assert checked >= 10


def test_supported_samplers_all_resolve():
    for sampler in supported_samplers():
        assert resolve_sampler(sampler.name, "automatic")[0] is not None

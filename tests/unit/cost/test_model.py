"""The build-versus-buy algebra, pinned with numbers worked by hand."""

from __future__ import annotations

import math

import pytest

from pixelmill.cost import model as m

C, G, R, E = 0.03, 1.20, 600.0, 2000.0


def test_crossover_pinned():
    # G/r = 0.002 $/image, margin 0.028 $/image, N* = 2000 / 0.028
    assert m.crossover_volume(C, G, R, E) == pytest.approx(71_428.571, rel=1e-6)


def test_costs_at_50k_hosted_cheaper_by_600():
    assert m.hosted_cost(C, 50_000) == pytest.approx(1500)
    assert m.elastic_cost(G, R, E, 50_000) == pytest.approx(2100)
    v = m.verdict(C, G, R, E, 50_000)
    assert v.winner == "hosted"
    assert v.saving == pytest.approx(-600)
    assert v.message == (
        "at 50,000 images/month you are below the crossover of 71,429: the hosted API is cheaper by $600/month"
    )


def test_past_the_crossover_self_hosting_saves():
    v = m.verdict(C, G, R, E, 100_000)
    assert v.winner == "self-hosted"
    assert v.saving == pytest.approx(3000 - 2200)
    assert "past the crossover of 71,429: self-hosting saves $800/month" in v.message


@pytest.mark.parametrize("price", [0.002, 0.001])
def test_never_wins_when_price_at_or_below_gpu_cost(price):
    assert m.crossover_volume(price, G, R, E) is None
    v = m.verdict(price, G, R, E, 10_000)
    assert v.crossover is None and v.winner == "hosted"
    assert v.message.startswith("self-hosting never wins")


def test_zero_overhead_crosses_at_zero_and_tie_at_zero_volume():
    assert m.crossover_volume(C, G, R, 0) == 0
    assert m.verdict(C, G, R, 0, 0).winner == "tie"


@pytest.mark.parametrize("bad", [dict(rate=0), dict(rate=-5)])
def test_invalid_rate_refused(bad):
    with pytest.raises(ValueError):
        m.crossover_volume(C, G, bad["rate"], E)


def test_negative_inputs_refused():
    with pytest.raises(ValueError):
        m.hosted_cost(-1, 10)
    with pytest.raises(ValueError):
        m.elastic_cost(G, R, -1, 10)
    with pytest.raises(ValueError):
        m.gpu_capacity(R, utilisation=1.5)


def test_capacity_and_step_cost():
    capacity = m.gpu_capacity(600, 730, 0.5)
    assert capacity == pytest.approx(219_000)
    assert m.gpus_needed(0, capacity) == 0
    assert m.gpus_needed(219_000, capacity) == 1
    assert m.gpus_needed(219_001, capacity) == 2
    assert m.dedicated_cost(219_001, 900, capacity, 2000) == 2 * 900 + 2000


def test_dedicated_crossings_single_win():
    # capacity 100k, M = 1000, E = 2000, c = 0.03: step 1 wins from (1000+2000)/0.03 = 100k → not below 100k;
    # step 2 threshold (2000+2000)/0.03 = 133,333 inside (100k, 200k]; then it keeps winning.
    crossings = m.dedicated_crossings(0.03, 1000, 100_000, 2000, 1_000_000)
    assert crossings == [m.Crossing(pytest.approx(133_333.33), "self-hosted")]


def test_dedicated_crossings_lead_changes_hands_at_a_step():
    # M = 2500 per 100k images: a full GPU costs $0.025/image < c, but each new GPU's jump
    # (2500) exceeds what the hosted bill grows right after the step.
    crossings = m.dedicated_crossings(0.03, 2500, 100_000, 500, 300_000)
    assert [(c.volume, c.to) for c in crossings] == [
        (pytest.approx(5500 / 0.03), "self-hosted"), (200_000, "hosted"), (pytest.approx(8000 / 0.03), "self-hosted"),
    ]
    # Check the claims directly against the cost functions on either side of each crossing.
    for crossing in crossings:
        above = crossing.volume + 1
        own = m.dedicated_cost(above, 2500, 100_000, 500)
        assert (own < m.hosted_cost(0.03, above)) == (crossing.to == "self-hosted")


def test_dedicated_never_wins_when_a_full_gpu_costs_more_per_image():
    assert m.dedicated_crossings(0.001, 1000, 100_000, 0, 1_000_000) == []


def test_dedicated_crossings_bounded():
    with pytest.raises(ValueError):
        m.dedicated_crossings(0.03, 1, 1, 0, 1e9)


def test_proportional_steps_model():
    model = m.proportional_steps_model(600, 30)
    assert model.basis == "assumed"
    assert model.rate(30) == pytest.approx(600)
    assert model.rate(4) == pytest.approx(600 * 30 / 4)
    # moving from 30 to 4 steps moves N* down
    assert m.crossover_volume(C, G, model.rate(4), E) < m.crossover_volume(C, G, 600, E)


def test_fit_steps_model_measured_line():
    # 1 s fixed + 0.1 s per step: 30 steps → 4 s → 900/h; 10 steps → 2 s → 1800/h
    model = m.fit_steps_model({30: 900.0, 10: 1800.0})
    assert model.basis == "measured"
    assert model.fixed_s == pytest.approx(1.0)
    assert model.per_step_s == pytest.approx(0.1)
    assert model.rate(4) == pytest.approx(3600 / 1.4)


def test_fit_steps_model_single_point_is_an_assumption():
    model = m.fit_steps_model({20: 1000.0})
    assert model.basis == "assumed" and model.rate(10) == pytest.approx(2000)
    assert m.fit_steps_model({}) is None


def test_fit_falls_back_when_more_steps_look_faster():
    model = m.fit_steps_model({10: 500.0, 30: 900.0}, {10: 1, 30: 5})
    assert model.basis == "assumed" and model.rate(30) == pytest.approx(900)


def test_steps_model_refuses_zero_steps():
    with pytest.raises(ValueError):
        m.proportional_steps_model(600, 30).rate(0)
    assert math.isfinite(m.proportional_steps_model(600, 30).rate(1))

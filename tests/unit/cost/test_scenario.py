"""What-if scenarios: the dashboard's one computation, the same as the report's."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from pixelmill.cost import model as m
from pixelmill.cost.ledger import summarize
from pixelmill.cost.prices import build_config, parse_cost_file
from pixelmill.cost.report import build_report
from pixelmill.cost.scenario import rate_at_steps, reference_steps, what_if
from tests.unit.cost.test_ledger_report import NOW, job

# r = 1973.6854439798658 images/GPU-hour: 600 images in 1094.3766... GPU-seconds.
RATE = 1973.6854439798658
PRICE = 0.000613


def _report(price: float = PRICE, gpu_hour: float = 0.000608 * RATE, **config):
    ledger = summarize([job(1, 600, 600 * 3600 / RATE, size=(1024, 1024))], since=NOW - timedelta(days=30), now=NOW)
    offers, _ = parse_cost_file(f'[[offer]]\nprovider = "t"\nmodel = "m"\nprice_per_image = {price}\n'
                                'checked = 2026-11-21\n', "test")
    cfg = replace(build_config(gpu_hour=gpu_hour, overhead_month=2000, **config), offers=offers)
    return build_report(ledger, cfg)


def test_without_overrides_the_scenario_is_the_reports_verdict():
    report = _report()
    scenario = what_if(report)
    assert scenario.verdict == report.verdict
    assert (scenario.price, scenario.rate, scenario.volume) == (report.reference_price, report.rate, 600)
    assert scenario.rate_at_steps == report.rate  # at the reference steps r is not recomputed


def test_c_just_above_g_over_r_has_a_crossover():
    # $0.000613 > G/r = $0.000608: self-hosting wins above N* = 2000 / 0.000005 (the issue: "never").
    scenario = what_if(_report())
    assert scenario.gpu_cost_per_image == pytest.approx(0.000608, rel=1e-12)
    assert scenario.crossover == pytest.approx(2000 / (PRICE - 0.000608), rel=1e-6)
    assert "below the crossover of 400,000,000" in scenario.verdict["message"]
    rounded = what_if(_report(), price=0.0006)  # what the old slider used
    assert rounded.crossover is None and "never wins" in rounded.verdict["message"]


def test_overrides_replace_only_what_they_name():
    report = _report()
    scenario = what_if(report, price=0.03, volume=50_000, overhead=100.0)
    assert scenario.gpu_hour == report.self_hosted.gpu_hour and scenario.rate == report.rate
    expected = m.verdict(0.03, report.self_hosted.gpu_hour, report.rate, 100.0, 50_000)
    assert scenario.verdict == vars(expected)


def test_steps_what_if_follows_the_reports_steps_model():
    report = _report()
    assert reference_steps(report) == 30
    scenario = what_if(report, steps=3)  # one step count measured: r ∝ 1/steps
    assert scenario.rate_at_steps == pytest.approx(RATE * 10, rel=1e-12)
    model = m.StepsModel(fixed_s=1.0, per_step_s=0.1, basis="measured")
    assert rate_at_steps(600.0, 30, 10, model) == pytest.approx(600 * 4.0 / 2.0)


def test_dedicated_fleet_scales_with_the_scenario_rate():
    report = _report(gpu_month=900.0)
    scenario = what_if(report, steps=15)
    assert scenario.dedicated.capacity == pytest.approx(2 * RATE * 730 * 0.7)


def test_no_rate_no_scenario_and_impossible_assumptions_are_errors():
    ledger = summarize([], since=NOW - timedelta(days=30), now=NOW)
    report = build_report(ledger, build_config(gpu_hour=1.2, overhead_month=2000))
    assert what_if(report) is None
    assert what_if(report, rate=600).crossover == pytest.approx(2000 / (report.reference_price - 0.002))
    for bad in ({"rate": 0.0}, {"price": -1.0}, {"steps": 0}):
        with pytest.raises(ValueError):
            what_if(_report(), **bad)

"""The few-step what-if is fitted per model: a 4-step FLUX-schnell and a 20/30-step SDXL in
one ledger are two lines, not three points of one."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from pixelmill.cost import model as m
from pixelmill.cost.ledger import summarize
from pixelmill.cost.report import build_report
from pixelmill.cost.scenario import reference_steps, what_if
from tests.unit.cost.test_ledger_report import NOW, _printed, config, job

# SDXL: 10 s at 20 steps, 14 s at 30 (2 s fixed + 0.4 s/step); FLUX-schnell: 1 s at 4 steps.
MIXED = [job(1, 100, 1000.0, steps=20, model="sdxl"), job(1, 200, 2800.0, steps=30, model="sdxl"),
         job(2, 150, 150.0, steps=4, model="flux-schnell")]


def _report(records):
    return build_report(summarize(records, since=NOW - timedelta(days=30), now=NOW), config())


def test_each_model_is_fitted_to_its_own_step_counts():
    report = _report(MIXED)
    sdxl, flux = report.what_if_by_model
    assert (sdxl.model, sdxl.images, sdxl.measured_steps, sdxl.basis) == ("sdxl", 300, [20, 30], "measured")
    assert sdxl.steps_model["fixed_s"] == pytest.approx(2.0) and sdxl.steps_model["per_step_s"] == pytest.approx(0.4)
    assert (flux.model, flux.images, flux.measured_steps, flux.basis) == ("flux-schnell", 150, [4], "assumed")
    rate = {(w.model, r.steps): r.rate for w in report.what_if_by_model for r in w.what_if}
    assert rate[("flux-schnell", 4)] == pytest.approx(3600.0)  # its own measurement, not a pooled line's
    assert rate[("flux-schnell", 1)] == pytest.approx(4 * 3600.0)  # r ∝ 1/steps from 4 steps
    assert rate[("sdxl", 30)] == pytest.approx(3600 / 14) and rate[("sdxl", 1)] == pytest.approx(3600 / 2.4)
    # A pooled fit would have put FLUX's 4-step point on SDXL's line:
    pooled = m.fit_steps_model(*summarize(MIXED, since=NOW - timedelta(days=30), now=NOW).step_rates())
    assert pooled.rate(4) != pytest.approx(3600.0) and pooled.rate(4) != pytest.approx(3600 / 3.6)


def test_the_single_what_if_keys_are_the_main_models():
    report = _report(MIXED)
    assert report.steps_model == report.what_if_by_model[0].steps_model  # sdxl: most images
    assert report.what_if == report.what_if_by_model[0].what_if
    assert reference_steps(report) == 30  # sdxl's most used, not FLUX's 4 steps
    assert what_if(report, steps=20).rate_at_steps == pytest.approx(report.rate * 14 / 10)


def test_notes_say_which_models_are_measured_and_which_assumed():
    notes = _report(MIXED).notes
    assert any("measured rates for sdxl; r ∝ 1/steps assumed for flux-schnell" in n for n in notes)
    [flux] = [n for n in notes if n.startswith("flux-schnell: ")]
    assert "from the 4-step measurement" in flux and "measured one step count only" in flux
    assert not any(n.startswith("sdxl: ") for n in notes)


def test_the_table_and_the_json_show_every_model():
    report = _report(MIXED)
    text = _printed(report)
    assert "few-step what-if per model" in text
    assert "sdxl: time per step fitted to the measured step counts 20, 30" in text
    assert "flux-schnell: r ∝ 1/steps assumed from the 4-step measurement" in text
    rows = [line for line in text.splitlines()  # the what-if rows, not the measured-rate table's
            if "flux-schnell" in line and ("│ measured" in line or "r ∝ 1/steps │" in line)]
    assert len(rows) == 7 and any("measured" in r and "3,600" in r for r in rows)
    data = json.loads(report.model_dump_json())
    assert [w["model"] for w in data["what_if_by_model"]] == ["sdxl", "flux-schnell"]
    assert {"steps_model", "what_if"} <= set(data)


def test_one_model_keeps_the_old_shape():
    report = _report([job(1, 100, 1000.0, steps=20), job(1, 200, 2800.0, steps=30)])
    [only] = report.what_if_by_model
    assert only.model == "sdxl" and report.what_if == only.what_if and report.steps_model["basis"] == "measured"
    assert not any("per model" in n for n in report.notes)
    text = _printed(report)
    assert "few-step what-if: time per step fitted to the measured step counts 20, 30" in text
    assert "per model" not in text


def test_a_model_without_gpu_time_has_no_what_if():
    report = _report([job(1, 100, 0.0, steps=4, model="flux-schnell"), job(1, 100, 1000.0, steps=20)])
    assert [w.model for w in report.what_if_by_model] == ["sdxl"]

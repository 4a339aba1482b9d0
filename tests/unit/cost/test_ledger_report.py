"""Ledger summaries and the report built from them, on hand-made job records."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pixelmill.cost.invoice import parse_invoice
from pixelmill.cost.ledger import parse_since, summarize
from pixelmill.cost.prices import build_config
from pixelmill.cost.report import build_report
from pixelmill.core.types import GenerationRequest, JobRecord, JobStatus, Mode

NOW = datetime(2026, 11, 21, 12, tzinfo=timezone.utc)


def job(days_ago: float, images: int, gpu_s: float, *, steps=30, key=None, size=(1024, 1024), model="sdxl"):
    finished = NOW - timedelta(days=days_ago)
    return JobRecord(
        id=f"j{days_ago}-{images}-{steps}-{key}", status=JobStatus.succeeded,
        request=GenerationRequest(prompt="x"), created_at=finished, finished_at=finished, mode=Mode.txt2img,
        steps=steps, images=images, gpu_seconds=gpu_s, api_key_id=key, model=model, width=size[0], height=size[1],
    )


def config(**kw):
    return build_config(gpu_hour=1.2, overhead_month=2000, **kw)


def test_parse_since():
    assert parse_since("30d", NOW) == NOW - timedelta(days=30)
    assert parse_since("12h", NOW) == NOW - timedelta(hours=12)
    assert parse_since("2w", NOW) == NOW - timedelta(days=14)
    assert parse_since("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        parse_since("yesterday", NOW)


def test_summarize_volumes_rates_and_keys():
    records = [job(1, 4, 24.0), job(2, 2, 12.0, key="k1"), job(40, 10, 60.0), job(3, 6, 18.0, steps=10, key="k1")]
    s = summarize(records, since=NOW - timedelta(days=7), now=NOW)
    assert s.total.images == 12 and s.total.gpu_seconds == pytest.approx(54.0)
    assert s.trailing_volume == 12  # the 40-day-old job is outside the trailing window
    assert s.total.rate == pytest.approx(12 / (54 / 3600))
    assert s.by_steps[30].rate == pytest.approx(6 / (36 / 3600))
    assert s.by_api_key["k1"].images == 8 and s.by_api_key[None].images == 4
    assert sum(s.images_per_day.values()) == 12


def test_trailing_volume_counts_jobs_before_since():
    s = summarize([job(20, 5, 10.0), job(1, 1, 2.0)], since=NOW - timedelta(days=7), now=NOW)
    assert s.total.images == 1 and s.trailing_volume == 6


def test_report_numbers():
    records = [job(1, 600, 3600.0)]  # r = 600 images/GPU-hour
    ledger = summarize(records, since=NOW - timedelta(days=30), now=NOW)
    report = build_report(ledger, config())
    assert report.rate == pytest.approx(600)
    assert report.self_hosted.gpu_cost == pytest.approx(1.2)
    assert report.self_hosted.overhead == pytest.approx(2000)
    core = next(o for o in report.offers if o.name == "stability/stable-image-core")
    assert core.would_have_cost == pytest.approx(600 * 0.03)
    assert core.crossover == pytest.approx(2000 / 0.028)
    assert report.reference == min(report.offers, key=lambda o: o.price_per_image).name
    assert report.verdict["winner"] == "hosted"
    assert report.what_if and report.steps_model["basis"] == "assumed"
    assert any("r ∝ 1/steps" in note for note in report.notes)
    assert report.per_key[0].api_key_id is None and report.per_key[0].images == 600


def test_report_compare_to_and_dedicated():
    ledger = summarize([job(1, 600, 3600.0)], since=NOW - timedelta(days=30), now=NOW)
    report = build_report(ledger, config(compare_to="stability/stable-image-core", gpu_month=900))
    assert report.reference == "stability/stable-image-core" and report.reference_price == pytest.approx(0.03)
    assert report.dedicated.capacity == pytest.approx(600 * 730 * 0.7)
    assert report.dedicated.gpus_needed == 1


def test_report_without_gpu_time_has_no_verdict():
    ledger = summarize([], since=NOW - timedelta(days=30), now=NOW)
    report = build_report(ledger, config())
    assert report.rate is None and report.verdict is None
    assert build_report(ledger, config(), rate=600).verdict is not None


def test_report_with_invoice():
    ledger = summarize([job(1, 600, 3600.0)], since=NOW - timedelta(days=30), now=NOW)
    invoice = parse_invoice("date,images,amount\n2026-09-30,40000,\"$1,600.00\"\n2026-10-31,60000,2400\n")
    report = build_report(ledger, config(), invoice=invoice)
    assert report.invoice["price_per_image"] == pytest.approx(0.04)
    assert report.invoice["monthly_volume"] == pytest.approx(50_000)
    assert report.invoice["crossover"] == pytest.approx(2000 / 0.038)
    assert "below the crossover of 52,632: the hosted API is cheaper by $100/month" in report.invoice["verdict"]


def test_per_megapixel_offer_priced_at_the_ledger_sizes():
    ledger = summarize([job(1, 10, 10.0, size=(512, 512))], since=NOW - timedelta(days=30), now=NOW)
    report = build_report(ledger, config())
    fal = next(o for o in report.offers if o.provider == "fal")
    assert fal.price_per_image == pytest.approx(0.035 * 512 * 512 / 1e6)


def _printed(report) -> str:
    from rich.console import Console

    from pixelmill.cost.tables import print_report

    console = Console(record=True, width=200)
    print_report(console, report)
    return console.export_text()


def test_steps_note_with_one_measured_step_count():
    report = build_report(summarize([job(1, 600, 3600.0)], since=NOW - timedelta(days=30), now=NOW), config())
    [note] = [n for n in report.notes if "r ∝ 1/steps" in n]
    assert "from the 30-step measurement" in note and "measured one step count only" in note
    assert "r ∝ 1/steps assumed from the 30-step measurement" in _printed(report)


def test_steps_note_when_several_step_counts_do_not_fit_a_line():
    # Seven step counts whose time per image falls as steps rise (noise on a tiny model):
    # the fit is unusable, but the ledger did measure seven step counts, not one.
    steps = (1, 2, 4, 8, 20, 30, 50)
    records = [job(1, 10, 10.0 - i, steps=s) for i, s in enumerate(steps)]
    report = build_report(summarize(records, since=NOW - timedelta(days=30), now=NOW), config())
    assert report.steps_model["basis"] == "assumed" and len(report.what_if) == 7
    [note] = [n for n in report.notes if "r ∝ 1/steps" in n]
    assert "one step count" not in note
    assert "7 step counts (1, 2, 4, 8, 20, 30, 50) do not fit a line" in note
    assert "one step count" not in _printed(report)

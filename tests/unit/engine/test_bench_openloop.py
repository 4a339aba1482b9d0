"""``python -m bench.openloop`` at a tiny size: Poisson arrivals, percentiles, paired rounds
with confidence intervals, the default batch size, the load guard."""

from __future__ import annotations

import math
import re
import statistics

import pytest

from bench import openloop
from pixelmill.settings import Settings


def test_a_tiny_open_loop_run_is_recorded_with_intervals_versions_and_png_levels(tmp_path):
    out = tmp_path / "RESULTS.md"
    code = openloop.main(["--rates", "20", "--jobs", "2", "--rounds", "2", "--burst", "2",
                          "--max-load", "1e9", "--out", str(out)])
    assert code == 0
    text = out.read_text()
    default = Settings().max_batch_size
    assert f"--max-batch-size {default} (the default)" in text
    number = r"-?[\d.]+"  # a t-interval of two rounds may well reach below zero
    assert re.search(rf"\| 20\.00 \| 4 \| {number} \({number}–{number}\) \| \d+ \| \d+ \| \d+ \| 0 \|", text)
    rounds = re.findall(r"^\| ([12]) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert [r[0] for r in rounds] == ["1", "2"]
    ratios = [float(r[3]) for r in rounds]
    assert all(r > 0 for r in ratios)
    assert all(abs(float(s) / float(i) - float(r)) < 0.01 for _, s, i, r in rounds)
    summary = re.search(rf"mean ({number}) \(95 % t-interval ({number})–({number})\), median ({number})", text)
    assert summary and float(summary[2]) <= float(summary[1]) <= float(summary[3])
    assert abs(float(summary[1]) - statistics.fmean(ratios)) < 0.002
    assert "torch 2." in text and "(locks/)" in text and "highest during the run" in text
    assert "| 1 |" in text and "| 6 |" in text  # PNG levels, reported apart


def test_the_t_interval_matches_the_textbook():
    # mean 10, sample sd 2 over 5 rounds: 10 ± 2.776 * 2 / sqrt(5)
    values = [7.0, 9.0, 10.0, 11.0, 13.0]
    mean, low, high = openloop.t_interval(values)
    half = 2.776 * statistics.stdev(values) / math.sqrt(5)
    assert mean == 10.0 and low == pytest.approx(10 - half) and high == pytest.approx(10 + half)
    assert math.isnan(openloop.t_interval([1.0])[1])  # one round: no interval, not a zero-width one
    assert openloop.t95(11) == 2.228 and openloop.t95(500) == 1.96  # between rows: the wider one


def test_the_bootstrap_interval_brackets_the_median_and_is_reproducible():
    values = [0.91, 0.95, 0.93, 0.97, 0.92, 0.94, 0.96]
    low, high = openloop.bootstrap_interval(values)
    assert min(values) <= low <= statistics.median(values) <= high <= max(values)
    assert openloop.bootstrap_interval(values) == (low, high)
    assert openloop.bootstrap_interval([0.9] * 5) == (0.9, 0.9)


def test_the_baseline_batches_like_a_worker_with_the_default_size():
    from pixelmill.core.types import GenerationRequest

    def req(width: int, seed: int) -> GenerationRequest:
        return GenerationRequest(prompt="p", width=width, height=width, steps=2, seed=seed)

    requests = [req(64, s) for s in range(5)] + [req(96, 9)]
    batches = openloop.batches_of(requests, 4)
    assert [[r.seed for r in b] for b in batches] == [[0, 1, 2, 3], [4], [9]]
    assert openloop.parse_args([]).max_batch_size == Settings().max_batch_size


def test_the_load_guard_refuses_a_run_that_got_busy():
    guard = openloop.LoadGuard.__new__(openloop.LoadGuard)
    guard.start, guard.highest = 0.5, 3.2
    assert not openloop.recordable(guard, 2.0)
    assert openloop.recordable(guard, 4.0)

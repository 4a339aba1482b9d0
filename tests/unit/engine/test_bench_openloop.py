"""``python -m bench.openloop`` at a tiny size: Poisson arrivals, percentiles, the load guard."""

from __future__ import annotations

from bench import openloop


def test_a_tiny_open_loop_run_is_recorded_with_versions_and_png_levels(tmp_path):
    out = tmp_path / "RESULTS.md"
    code = openloop.main(["--rates", "20", "--jobs", "3", "--max-load", "1e9", "--out", str(out)])
    assert code == 0
    text = out.read_text()
    assert "| 20.00 | 3 |" in text and "| 0 |\n" in text  # three jobs, none failed
    assert "torch 2." in text and "(locks/)" in text and "highest during the run" in text
    assert "| 1 |" in text and "| 6 |" in text  # PNG levels, reported apart


def test_the_load_guard_refuses_a_run_that_got_busy():
    guard = openloop.LoadGuard.__new__(openloop.LoadGuard)
    guard.start, guard.highest = 0.5, 3.2
    assert not openloop.recordable(guard, 2.0)
    assert openloop.recordable(guard, 4.0)

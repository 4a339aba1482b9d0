"""The chart file and the crossover watch (state changes, signed alert bodies)."""

from __future__ import annotations

from pixelmill.cost.alerts import CrossoverWatch, crossing_state, signed_headers
from pixelmill.cost.plot import CurveInputs, plot_curves, volume_range
from pixelmill.outbound.webhooks import encode_body, verify

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png(tmp_path):
    inputs = CurveInputs(price=0.03, gpu_hour=1.2, rate=600, overhead=2000, volume=50_000, gpu_month=900,
                         capacity=600 * 730 * 0.7, invoice=(40_000, 1600))
    path = plot_curves(inputs, tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 20_000


def test_plot_never_wins(tmp_path):
    path = plot_curves(CurveInputs(price=0.001, gpu_hour=1.2, rate=600, overhead=2000), tmp_path / "never.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_volume_range_covers_the_marks():
    low, high = volume_range(CurveInputs(price=0.03, gpu_hour=1.2, rate=600, overhead=2000, volume=5_000_000))
    assert low <= 100 and high >= 50_000_000


def test_crossing_state():
    assert crossing_state(10, None) == "never"
    assert crossing_state(10, 5) == "above" and crossing_state(5, 5) == "below"
    assert crossing_state(10, 5, known=False) == "unknown"


def test_watch_alerts_only_on_crossings_both_ways():
    watch = CrossoverWatch()
    assert watch.observe(10, 100) is None  # the first check is a baseline
    assert watch.observe(50, 100) is None
    up = watch.observe(150, 100)
    assert up["direction"] == "above" and watch.crossings_total == 1
    down = watch.observe(90, 100)
    assert down["direction"] == "below" and watch.crossings_total == 2
    assert watch.observe(90, None) is None  # prices changed: not a traffic crossing
    assert watch.observe(200, 100) is None
    assert watch.public()["checks_total"] == 6 and watch.public()["state"] == "above"


def test_alert_headers_verify_like_job_webhooks():
    payload = encode_body({"event": "cost.crossover", "volume": 1})
    headers = signed_headers(b"secret", payload, timestamp=1_800_000_000)
    assert headers["X-Pixelmill-Event"] == "cost.crossover"
    assert verify(b"secret", headers["X-Pixelmill-Timestamp"], headers["X-Pixelmill-Signature"], payload,
                  now=1_800_000_010)

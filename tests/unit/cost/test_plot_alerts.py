"""The chart file and the crossover watch (state changes, signed alert bodies)."""

from __future__ import annotations

import asyncio

from pixelmill.cost.alerts import CrossoverWatch, alert_sender, crossing_state
from pixelmill.cost.plot import CurveInputs, plot_curves, volume_range
from pixelmill.outbound.webhooks import verify
from tests.support.receiver import Receiver

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


def test_alerts_go_through_the_job_webhook_sender_and_verify_like_job_webhooks():
    """One sender for jobs and alerts: same signature, same URL guard, same retries."""
    receiver = Receiver()
    try:
        sender = alert_sender(b"secret", allow_private=True)  # the receiver is on loopback
        result = asyncio.run(sender.deliver(f"{receiver.url}/alerts", "cost.crossover",
                                            {"event": "cost.crossover", "volume": 1}))
        assert result.ok and result.attempts == 1
        (request,) = receiver.requests
        headers = request["headers"]
        assert headers["X-Pixelmill-Event"] == "cost.crossover"
        assert verify(b"secret", headers["X-Pixelmill-Timestamp"], headers["X-Pixelmill-Signature"], request["body"])
    finally:
        receiver.close()


def test_alert_urls_are_guarded_and_named_after_the_setting():
    result = asyncio.run(alert_sender(b"secret", allow_private=False).deliver(
        "http://127.0.0.1:9/alerts", "cost.crossover", {"event": "cost.crossover"}))
    assert not result.ok and result.attempts == 0  # refused before any request was sent

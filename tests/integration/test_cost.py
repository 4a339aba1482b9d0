"""The cost ledger end to end: a real server makes images, the CLI reports and plots them,
the summary endpoint and the crossover alert (log, counter, signed webhook) react."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pixelmill.outbound.webhooks import verify
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess, subprocess_env

SECRET = "cost-test-secret"
# One offer at $1/image and free GPU time make N* = E / c = 4 images/month exactly.
COST_FILE = """
[self_hosted]
gpu_hour = 0.0
overhead_month = 4.0

[[offer]]
provider = "test"
model = "dollar"
price_per_image = 1.0
checked = 2026-11-21
"""


def pixelmill(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pixelmill.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=120)


def test_crossover_command_prints_n_star_and_verdict():
    done = pixelmill("cost", "crossover", "--price", "0.03", "--gpu-hour", "1.20", "--rate", "600",
                     "--overhead", "2000", "--volume", "50000")
    assert done.returncode == 0, done.stderr
    assert "crossover N*: 71,429 images/month" in done.stdout
    assert "below the crossover of 71,429: the hosted API is cheaper by $600/month" in done.stdout
    as_json = json.loads(pixelmill("cost", "crossover", "--price", "0.001", "--gpu-hour", "1.2", "--rate", "600",
                                   "--json").stdout)
    assert as_json["crossover"] is None


def _submit(url: str, steps: int) -> str:
    body = {"prompt": "ledger", "width": 64, "height": 64, "steps": steps, "n": 2, "seed": 1}
    response = httpx.post(f"{url}/v1/jobs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _wait(url: str, ids: list[str], timeout: float = 120) -> list[dict]:
    deadline, done = time.monotonic() + timeout, {}
    while len(done) < len(ids) and time.monotonic() < deadline:
        for job_id in set(ids) - set(done):
            job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                assert job["status"] == "succeeded", job
                done[job_id] = job
        time.sleep(0.1)
    assert len(done) == len(ids), "jobs did not finish"
    return [done[i] for i in ids]


def _wait_alert_state(url: str, state: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = httpx.get(f"{url}/v1/cost/summary", timeout=10).json()
        if summary["alerts"]["state"] == state:
            return summary
        time.sleep(0.2)
    raise AssertionError(f"alert state never became {state}: {summary['alerts']}")


@pytest.fixture
def cost_server(demo_models: Path, tmp_path: Path):
    (tmp_path / "cost.toml").write_text(COST_FILE)
    receiver = Receiver()
    server = ServerProcess(
        tmp_path, "--models-dir", str(demo_models), "--model", "demo", "--cost-config", str(tmp_path / "cost.toml"),
        "--cost-check-interval-s", "0.5", "--cost-alert-webhook", f"{receiver.url}/alerts",
        "--webhook-allow-private", "--webhook-secret", SECRET,
    ).start()
    yield server, receiver
    server.stop()
    receiver.close()


def test_ledger_report_plot_and_crossover_alert(cost_server, tmp_path: Path):
    server, receiver = cost_server
    first = _wait(server.url, [_submit(server.url, 1)])
    summary = _wait_alert_state(server.url, "below")  # 2 images < N* = 4
    assert summary["trailing_volume"] == 2 and summary["verdict"]["crossover"] == pytest.approx(4)

    jobs = first + _wait(server.url, [_submit(server.url, 2), _submit(server.url, 2)])
    summary = _wait_alert_state(server.url, "above")  # 6 images > 4: crossed
    assert summary["alerts"]["crossings_total"] == 1
    assert summary["alerts"]["last_crossing"]["direction"] == "above"

    images = sum(job["images"] for job in jobs)
    gpu_hours = sum(job["gpu_seconds"] for job in jobs) / 3600
    db = f"sqlite:///{server.workdir / 'data' / 'pixelmill.db'}"
    done = pixelmill("cost", "report", "--json", "--db", db, "--config", str(tmp_path / "cost.toml"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["images"] == images == 6 and report["trailing_volume"] == 6
    assert report["rate"] == pytest.approx(images / gpu_hours, rel=1e-6)
    assert {row["steps"] for row in report["rates"]} == {1, 2}
    assert report["per_key"] == [pytest.approx({"api_key_id": None, "images": 6, "gpu_seconds": gpu_hours * 3600,
                                                "self_hosted_gpu_cost": 0.0, "hosted_cost": 6.0})]

    table = pixelmill("cost", "report", "--db", db, "--config", str(tmp_path / "cost.toml"))
    assert table.returncode == 0, table.stderr
    assert "verdict (test/dollar):" in table.stdout and "past the crossover of 4" in table.stdout

    png = tmp_path / "curves.png"
    plotted = pixelmill("cost", "plot", "-o", str(png), "--db", db, "--config", str(tmp_path / "cost.toml"))
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes().startswith(b"\x89PNG")

    deadline = time.monotonic() + 15
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    [alert] = receiver.requests
    headers = {k.lower(): v for k, v in alert["headers"].items()}
    assert headers["x-pixelmill-event"] == "cost.crossover"
    assert verify(SECRET, headers["x-pixelmill-timestamp"], headers["x-pixelmill-signature"], alert["body"])
    body = json.loads(alert["body"])
    assert body["direction"] == "above" and body["volume"] == 6 and body["crossover"] == pytest.approx(4)
    assert "crossed above the crossover 4" in server.log()


def test_dashboard_is_served(server):
    page = httpx.get(f"{server.url}/dashboard", timeout=10)
    assert page.status_code == 200 and "<canvas" in page.text and "/dashboard/dashboard.js" in page.text
    script = httpx.get(f"{server.url}/dashboard/dashboard.js", timeout=10)
    assert script.status_code == 200 and "/v1/cost/summary" in script.text
    assert "function crossoverVolume" not in script.text  # the page computes no verdict of its own
    assert httpx.get(f"{server.url}/dashboard/secret.txt", timeout=10).status_code == 404
    assert httpx.get(f"{server.url}/v1/cost/summary?since=soon", timeout=10).status_code == 400


def test_summary_answers_what_if_parameters_with_the_reports_computation(server):
    httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "p", "size": "64x64"}, timeout=120)
    summary = httpx.get(f"{server.url}/v1/cost/summary", timeout=10).json()
    assert summary["scenario"]["verdict"] == summary["verdict"]  # no what-if: the report's own verdict
    params = {"price": "0.000613", "gpu_hour": repr(0.000608 * summary["rate"]), "overhead": "2000", "volume": "5000"}
    what_if = httpx.get(f"{server.url}/v1/cost/summary", params=params, timeout=10).json()["scenario"]
    assert what_if["price"] == 0.000613 and what_if["rate"] == summary["rate"]
    assert what_if["crossover"] == pytest.approx(2000 / 0.000005, rel=1e-6)
    assert "at 5,000 images/month you are below the crossover of 400,000,000" in what_if["verdict"]["message"]
    for bad in ({"rate": "0"}, {"price": "inf"}, {"steps": "0"}, {"price": "-1"}):
        answer = httpx.get(f"{server.url}/v1/cost/summary", params=bad, timeout=10)
        assert answer.status_code == 400, (bad, answer.text)

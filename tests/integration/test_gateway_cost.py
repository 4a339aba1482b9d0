"""The ledger and the report after real traffic through the gateway: spend by backend, the
counterfactuals, the saving, N* per model and the "move this model home" flag, the same
in ``pixelmill cost report --json`` and ``/v1/cost/summary``."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from pixelmill.cost.gateway import BELOW, MOVE_HOME
from tests.integration.test_gateway_routing import backends_toml, gateway, submit, upstream, wait
from tests.support.keys import pixelmill

COST = dict(cost_gpu_hour=36.0, cost_overhead_month=0.1, cost_compare_to="stability/stable-image-core")


def test_ledger_and_report_numbers(tmp_path):
    with upstream(tmp_path) as up:
        toml = backends_toml(tmp_path, up, kind="replicate")
        with gateway(tmp_path, toml, **COST) as gw:
            hosted = [submit(gw.url, "cloud-model", seed=i) for i in range(3)]
            local = [submit(gw.url, None, seed=i) for i in range(2)]
            for job in hosted + local:
                assert wait(gw.url, job["id"])["status"] == "succeeded"
            from pixelmill.cost.alerts import check_once

            asyncio.run(check_once(gw.services))  # the API's periodic check, once, now
            summary = httpx.get(f"{gw.url}/v1/cost/summary", timeout=30).json()
    assert summary["alerts"]["model_flags"] == {"cloud-model": MOVE_HOME, "fake": BELOW}
    costs = summary["gateway"]
    total = costs["total"]
    # local: 2 jobs × 0.01 GPU-s × $36/h; hosted: 3 images × $0.05 (the backend's price)
    assert total["by_backend"] == {"hosted": pytest.approx(0.15), "local": pytest.approx(0.0002)}
    assert total["actual"] == pytest.approx(0.1502)
    # all hosted: the 2 local images at the reference offer ($0.03) + what the hosted ones cost
    assert total["all_hosted"] == pytest.approx(0.21)
    # all local: r = 2 images / 0.02 GPU-s = 360,000/h, so 3 images cost 3 × 36 / 360,000
    assert total["all_local"] == pytest.approx(0.0005)
    assert total["saving"] == pytest.approx(0.21 - 0.1502)
    models = {row["model"]: row for row in costs["models"]}
    cloud, fake = models["cloud-model"], models["fake"]  # the fake backend names the model it ran
    assert cloud["policy"] == "upstream" and cloud["images_upstream"] == 3 and cloud["rate_source"] == "fleet"
    assert cloud["n_star"] == pytest.approx(0.1 / (0.05 - 36 / 360_000))  # ≈ 2.0 < 3 images: move home
    assert cloud["flag"] == MOVE_HOME
    assert fake["policy"] == "local" and fake["images_local"] == 2
    assert fake["n_star"] == pytest.approx(0.1 / (0.03 - 36 / 360_000))  # ≈ 3.3 > 2 images
    assert fake["flag"] == BELOW
    # The classic (local GPU) part of the report ignores upstream jobs: r is not skewed.
    assert summary["images"] == 2 and summary["rate"] == pytest.approx(360_000)

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in COST.items()]
    done = pixelmill("cost", "report", "--json", "--data-dir", str(tmp_path / "gateway"),
                     "--backends", str(toml), *flags)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gateway"]["total"] == total
    table = pixelmill("cost", "report", "--data-dir", str(tmp_path / "gateway"), "--backends", str(toml), *flags)
    assert table.returncode == 0, table.stderr
    assert "move this model home" in table.stdout and "all hosted" in table.stdout


def test_new_model_flags_go_to_the_cost_alert_webhook(tmp_path):
    """A flag that appears after the baseline check is one signed POST (the crossover
    alert's sender) naming each model, its flag and N*; an unchanged flag is not sent again."""
    from pixelmill.cost.alerts import MODEL_EVENT, check_once, watch_for
    from pixelmill.outbound.webhooks import secret_from, verify
    from tests.support.receiver import Receiver

    receiver = Receiver()
    try:
        with upstream(tmp_path) as up:
            toml = backends_toml(tmp_path, up, kind="replicate")
            settings = dict(COST, cost_alert_webhook=f"{receiver.url}/cost", webhook_allow_private=True,
                            cost_check_interval_s=0)  # the test runs the checks itself
            with gateway(tmp_path, toml, **settings) as gw:
                asyncio.run(check_once(gw.services))  # the baseline: nothing flagged, nothing sent
                assert receiver.requests == []
                jobs = [submit(gw.url, "cloud-model", seed=i) for i in range(3)] + [submit(gw.url, None)]
                for job in jobs:
                    assert wait(gw.url, job["id"])["status"] == "succeeded"
                asyncio.run(check_once(gw.services))
                assert len(receiver.requests) == 1, receiver.requests
                asyncio.run(check_once(gw.services))  # the same flags: nothing new to say
                assert len(receiver.requests) == 1
                settings = gw.services.settings
                secret = secret_from(settings.webhook_secret, settings.data_dir / "webhook-secret")
                deliveries = watch_for(gw.services.store).public()["webhook_deliveries"]
                summary = httpx.get(f"{gw.url}/v1/cost/summary", timeout=30).json()
    finally:
        receiver.close()
    (request,) = receiver.requests
    headers = request["headers"]
    assert request["path"] == "/cost" and headers["X-Pixelmill-Event"] == MODEL_EVENT
    assert verify(secret, headers["X-Pixelmill-Timestamp"], headers["X-Pixelmill-Signature"], request["body"])
    body = json.loads(request["body"])
    assert body["event"] == MODEL_EVENT
    flags = {flag["model"]: flag for flag in body["flags"]}
    assert {model: flag["flag"] for model, flag in flags.items()} == {"cloud-model": MOVE_HOME, "fake": BELOW}
    rows = {row["model"]: row for row in summary["gateway"]["models"]}
    assert flags["cloud-model"]["n_star"] == pytest.approx(rows["cloud-model"]["n_star"])
    assert flags["cloud-model"]["backend"] == "hosted" and flags["cloud-model"]["trailing_volume"] == 3
    assert "cloud-model: move this model home" in body["message"] and "fake: below N*" in body["message"]
    assert up.url not in request["body"].decode()  # the backend's name, never its URL
    assert [(d["event"], d["ok"]) for d in deliveries] == [(MODEL_EVENT, True)]
    assert summary["alerts"]["webhook_deliveries"][-1]["event"] == MODEL_EVENT

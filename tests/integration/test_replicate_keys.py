"""Issue 15: the Replicate dialect on a server with API keys: 401, 403, 404 and 429 as
problem bodies the official client raises, and each key seeing only its own predictions."""

from __future__ import annotations

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError

from pixelmill.auth.store import KeyStore
from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend
from tests.support.live import LiveServer

INPUT = {"prompt": "a fox", "width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def keyed_live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicate-keys")
    settings = Settings(data_dir=tmp / "data", models_dir=tmp / "models", heartbeat_s=0.1, lease_s=2,
                        poll_interval_s=0.05, max_batch_wait_ms=0)
    app = build_app(settings, backend=lambda s, r: FakeBackend())
    keys = KeyStore(app.state.services.store.engine)
    tokens = {name: keys.create(name, **options)[1] for name, options in {
        "alice": {}, "bob": {}, "admin": {"scope": "admin"}, "slow": {"rate": "1/hour"}}.items()}
    with LiveServer(app) as live:
        yield live, tokens


def client(server, token: str) -> replicate.Client:
    return replicate.Client(api_token=token, base_url=f"{server.url}/replicate")


def test_no_or_a_wrong_token_is_a_401_problem(keyed_live):
    server, _ = keyed_live
    response = httpx.post(f"{server.url}/replicate/v1/predictions", json={"version": "stability-ai/sdxl",
                                                                        "input": INPUT})
    assert response.status_code == 401
    assert response.json()["title"] == "Unauthenticated" and response.json()["status"] == 401
    with pytest.raises(ReplicateError) as wrong:
        client(server, "pm_not_a_key").run("stability-ai/sdxl", input=INPUT)
    assert wrong.value.status == 401


def test_each_key_sees_only_its_own_predictions(keyed_live):
    server, tokens = keyed_live
    alice, bob = client(server, tokens["alice"]), client(server, tokens["bob"])
    prediction = alice.predictions.create(version="stability-ai/sdxl", input=INPUT, wait=True)
    assert alice.predictions.get(prediction.id).status == "succeeded"
    with pytest.raises(ReplicateError) as hidden:
        bob.predictions.get(prediction.id)
    assert hidden.value.status == 404
    assert prediction.id not in [p.id for p in bob.predictions.list()]
    assert prediction.id in [p.id for p in client(server, tokens["admin"]).predictions.list()]


def test_the_webhook_secret_needs_an_admin_key(keyed_live):
    server, tokens = keyed_live
    with pytest.raises(ReplicateError) as refused:
        client(server, tokens["alice"]).webhooks.default.secret()
    assert refused.value.status == 403
    assert client(server, tokens["admin"]).webhooks.default.secret().key.startswith("whsec_")


def test_rate_limit_is_a_429_with_retry_after(keyed_live):
    server, tokens = keyed_live
    headers = {"Authorization": f"Bearer {tokens['slow']}"}
    body = {"version": "stability-ai/sdxl", "input": INPUT}
    assert httpx.post(f"{server.url}/replicate/v1/predictions", json=body, headers=headers).status_code == 201
    limited = httpx.post(f"{server.url}/replicate/v1/predictions", json=body, headers=headers)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert limited.json()["title"] == "Too many requests"


def test_url_inputs_to_private_addresses_are_refused(keyed_live):
    server, tokens = keyed_live
    with pytest.raises(ReplicateError) as refused:
        client(server, tokens["admin"]).run("stability-ai/sdxl", input={**INPUT, "image": "http://127.0.0.1:9/x.png"})
    assert refused.value.status == 422 and "input.image" in refused.value.detail


def test_a_webhook_to_a_private_address_is_refused_before_anything_is_queued(keyed_live):
    server, tokens = keyed_live
    response = httpx.post(f"{server.url}/replicate/v1/predictions", headers={"Authorization": f"Bearer {tokens['bob']}"},
                          json={"version": "stability-ai/sdxl", "input": INPUT, "webhook": "http://127.0.0.1:9/hook"})
    assert response.status_code == 422 and response.json()["param"] == "webhook"
    listed = httpx.get(f"{server.url}/replicate/v1/predictions", headers={"Authorization": f"Bearer {tokens['bob']}"})
    assert listed.json()["results"] == [] and listed.json()["next"] is None
    bad_cursor = httpx.get(f"{server.url}/replicate/v1/predictions?cursor=nonsense",
                           headers={"Authorization": f"Bearer {tokens['bob']}"})
    assert bad_cursor.status_code == 422 and bad_cursor.json()["param"] == "cursor"

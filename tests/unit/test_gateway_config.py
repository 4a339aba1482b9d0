"""The backends file (errors name the key; credentials only from the environment) and the
pure routing decisions."""

from __future__ import annotations

import pytest

from pixelmill.gateway.config import GatewayConfigError, parse_config
from pixelmill.gateway.routing import DEFAULT_JOB_S, LocalFleet, decide, expected_wait_s, sampled

BACKEND = """
[[backend]]
name = "hosted"
kind = "replicate"
url = "https://api.example.com/v1"
api_key_env = "HOSTED_TOKEN"
models = { "flux" = "acme/flux" }
price_per_megapixel = 0.02
checked = 2026-11-30
"""
ENV = {"HOSTED_TOKEN": "r8_secret"}


def test_a_valid_file_reads_the_credential_from_the_environment_only():
    config = parse_config(BACKEND + '[[route]]\nmodel = "flux"\npolicy = "shadow"\nbackend = "hosted"\nsample = 0.25\n',
                          "b.toml", ENV)
    backend = config.backends["hosted"]
    assert backend.api_key == "r8_secret"
    assert "r8_secret" not in repr(backend) and "r8_secret" not in repr(config)
    assert backend.price(1024, 1024, 2) == pytest.approx(2 * 0.02 * 1024 * 1024 / 1e6)
    assert config.route("flux").policy == "shadow" and config.route("flux").sample == 0.25
    assert config.route("other").policy == "local" and config.route(None).policy == "local"
    # A model only a backend serves is routed upstream without a [[route]].
    assert parse_config(BACKEND, "b.toml", ENV).route("flux").policy == "upstream"


@pytest.mark.parametrize("change, key", [
    (("kind = \"replicate\"", "kind = \"grpc\""), "kind"),
    (("url = \"https://api.example.com/v1\"", "url = \"ftp://x\""), "url"),
    (("price_per_megapixel = 0.02\n", ""), "price"),
    (("checked = 2026-11-30\n", ""), "checked"),
    (("models = { \"flux\" = \"acme/flux\" }", "models = []"), "models"),
    (("name = \"hosted\"", "name = \"local\""), "name"),
    (("checked = 2026-11-30", "checked = 2026-11-30\napi_key = \"inline\""), "api_key"),
])
def test_errors_name_the_key(change, key):
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(BACKEND.replace(*change), "b.toml", ENV)
    assert "b.toml" in str(caught.value) and key in str(caught.value)


def test_a_missing_credential_variable_is_named_and_its_value_never_shown():
    with pytest.raises(GatewayConfigError, match="HOSTED_TOKEN is not set"):
        parse_config(BACKEND, "b.toml", {})
    assert parse_config(BACKEND, "b.toml", {}, credentials=False).backends["hosted"].api_key is None


@pytest.mark.parametrize("route, key", [
    ('model = "flux"\npolicy = "sometimes"\nbackend = "hosted"', "policy"),
    ('model = "flux"\npolicy = "upstream"\nbackend = "nope"', "backend"),
    ('model = "sdxl"\npolicy = "upstream"\nbackend = "hosted"', "backend"),  # hosted does not serve sdxl
    ('model = "flux"\npolicy = "shadow"\nbackend = "hosted"', "sample"),
    ('model = "flux"\npolicy = "shadow"\nbackend = "hosted"\nsample = 2', "sample"),
])
def test_route_errors_name_the_key(route, key):
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(BACKEND + f"[[route]]\n{route}\n", "b.toml", ENV)
    assert key in str(caught.value)


def _route(policy: str, **fields):
    text = BACKEND + f'[[route]]\nmodel = "flux"\npolicy = "{policy}"\nbackend = "hosted"\n'
    text += "".join(f"{k} = {v}\n" for k, v in fields.items())
    return parse_config(text, "b.toml", ENV).routes["flux"]


def test_overflow_decisions():
    route = _route("local-then-upstream", overflow_wait_s=15)
    idle = LocalFleet(queued=0, running=0, workers=1, alive=True)
    busy = LocalFleet(queued=1, running=1, workers=1, alive=True, mean_job_s=8.0)
    shared = LocalFleet(queued=1, running=1, workers=2, alive=True, mean_job_s=8.0)
    dead = LocalFleet(queued=0, running=0, workers=1, alive=False)
    assert decide(route, idle).route == "local"
    assert expected_wait_s(busy) == 16.0 and decide(route, busy).route == "hosted"
    assert decide(route, shared).route == "local"  # 8 s over two workers
    assert decide(route, dead).route == "hosted" and "no local worker" in decide(route, dead).reason
    assert expected_wait_s(LocalFleet(queued=2, running=0, workers=1, alive=True)) == 2 * DEFAULT_JOB_S
    assert decide(_route("upstream"), None).route == "hosted"
    shadow = decide(_route("shadow", sample=0.5), None)
    assert shadow.route == "local" and shadow.shadow_backend == "hosted"


def test_sampling_is_stable_and_near_the_fraction():
    ids = [f"job_{i}" for i in range(2000)]
    chosen = [job_id for job_id in ids if sampled(job_id, 0.1)]
    assert 140 < len(chosen) < 260
    assert chosen == [job_id for job_id in ids if sampled(job_id, 0.1)]
    assert not any(sampled(job_id, 0) for job_id in ids) and all(sampled(job_id, 1) for job_id in ids)


def test_a_remote_fleet_is_dead_only_after_a_silent_lease_with_work_waiting():
    from datetime import datetime, timedelta, timezone

    from pixelmill.gateway.routing import remote_fleet_alive

    now = datetime.now(timezone.utc)
    ago = lambda s: now - timedelta(seconds=s)  # noqa: E731
    assert remote_fleet_alive(now, None, None, 30)  # nothing waits: nobody needs to be seen
    assert remote_fleet_alive(now, ago(5), None, 30)  # a fresh job: an idle worker may claim it
    assert not remote_fleet_alive(now, ago(40), None, 30)
    assert not remote_fleet_alive(now, ago(40), ago(35), 30)
    assert remote_fleet_alive(now, ago(40), ago(2), 30)  # busy, not dead


def test_a_routed_model_that_is_also_an_alias_is_refused(tmp_path):
    from pixelmill.services import gateway_config
    from pixelmill.settings import Settings

    path = tmp_path / "b.toml"
    path.write_text(BACKEND.replace('"flux" = "acme/flux"', '"dall-e-3" = "acme/flux"').replace(
        'api_key_env = "HOSTED_TOKEN"\n', ""))
    with pytest.raises(GatewayConfigError, match="'dall-e-3' is also a --model-aliases name"):
        gateway_config(Settings(backends=path))
    assert gateway_config(Settings(backends=path, model_aliases=["gpt-image-1"])).backends["hosted"]

"""The official ``webuiapi`` package, unchanged, against pixelmill's A1111 dialect on loopback.

A real server (uvicorn on 127.0.0.1, :class:`tests.support.live.LiveServer`) with API keys,
on a fake backend whose pixels depend on the seed: what is checked is the dialect (the
translation, the jobs, the answers), not a model. Two keys stand for two callers, sent
the way A1111 clients send ``--api-auth``: HTTP Basic with the key as the password.
"""

from __future__ import annotations

import base64
import threading
import time

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend, png
from tests.support.images import gradient
from tests.support.infotext import parse_a1111_parameters
from tests.support.live import LiveServer

SIZE = {"width": 64, "height": 64, "steps": 2}


PREVIEW = png(8, 8, (250, 0, 250))


class SeededBackend(FakeBackend):
    """Pixels from the seed (same seed, same picture); prompts starting "slow" take 0.05 s a
    step and report a live preview with each step, as the engine does every few steps."""

    async def generate_batch(self, requests, *, on_progress=None, cancel=None):
        slow = requests[0].prompt.startswith("slow")
        self.step_s = 0.05 if slow else 0.0

        def report(progress):
            on_progress(progress.model_copy(update={"previews": {0: PREVIEW}}) if slow else progress)

        report_to = report if on_progress else None
        return await super().generate_batch(requests, on_progress=report_to, cancel=cancel)

    def image(self, request, index):
        seed = request.seed + index
        return png(request.width or 64, request.height or 64, (seed % 251, (seed * 7) % 253, 90))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("a1111-webuiapi")
    models = root / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "other.safetensors").write_bytes(b"not loaded by the fake backend")
    control = models / "controlnets" / "canny"
    control.mkdir(parents=True)
    (control / "config.json").write_text("{}")
    (control / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    settings = Settings(models_dir=models, data_dir=root / "data", model="fake", default_steps=2)
    app = build_app(settings, backend=lambda s, r: SeededBackend())
    keys = {name: app.state.auth.keys.create(name)[1] for name in ("alice", "bob")}
    with LiveServer(app) as server:
        yield server, keys, app.state.services.store


def client(live, who: str = "alice") -> webuiapi.WebUIApi:
    server, keys, _ = live
    return webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1", username=who, password=keys[who])


def job_of(live, result, who: str = "alice"):
    """The pixelmill job behind an A1111 answer (its id is in ``info``), from the job store."""
    server, keys, store = live
    job = store.get(result.info["job_id"])
    response = httpx.get(f"{server.url}/v1/jobs/{job.id}", headers={"Authorization": f"Bearer {keys[who]}"})
    assert response.status_code == 200, response.text  # the caller's own job, seen with its key
    return job


def test_txt2img_batch_with_seeds_infotext_and_determinism(live):
    api = client(live)
    result = api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=1234, batch_size=2, **SIZE)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [1234, 1235] and result.info["seed"] == 1234
    assert (result.info["width"], result.info["height"], result.info["steps"]) == (64, 64, 2)
    assert result.info["sampler_name"] and result.info["sd_model_name"] == "fake"
    assert result.info["clip_skip"] == 1
    texts = result.info["infotexts"]
    assert len(texts) == 2 and texts[0].splitlines()[-1].startswith("Steps: 2")  # what LibreChat reads
    fields = parse_a1111_parameters(texts[1])
    assert (fields["prompt"], fields["negative_prompt"], fields["Seed"], fields["Size"]) == (
        "a lighthouse", "fog", "1235", "64x64")
    # A1111 >= 1.9 names the sampler and the schedule apart, in the infotext as in ``info``.
    assert (fields["Sampler"], fields["Schedule type"]) == (result.info["sampler_name"], result.info["scheduler"])
    assert result.parameters["prompt"] == "a lighthouse"
    again = api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=1234, batch_size=2, **SIZE)
    first, second = (np.asarray(image) for image in (result.images[0], again.images[0]))
    assert (first == second).all() and not (first == np.asarray(result.images[1])).all()
    job = job_of(live, result)
    assert job.status.value == "succeeded" and job.request.n == 2 and job.images == 2


def test_samplers_models_and_per_caller_checkpoint(live):
    alice, bob = client(live, "alice"), client(live, "bob")
    assert {"Euler a", "Euler", "DPM++ 2M"} <= set(alice.util_get_sampler_names())
    assert "karras" in alice.util_get_scheduler_names()
    assert alice.util_get_model_names() == ["fake", "other"]
    alice.util_set_model("other")
    assert alice.util_get_current_model() == "other"
    assert bob.util_get_current_model() == "fake"  # alice's choice is hers alone
    made = alice.txt2img(prompt="a boat", sampler_name="DPM++ 2M", scheduler="karras", **SIZE)
    assert job_of(live, made).request.model == "other"
    assert job_of(live, made).request.scheduler == "dpmpp_2m_karras"
    by_bob = bob.txt2img(prompt="a boat", **SIZE)
    assert job_of(live, by_bob, "bob").request.model == "fake"
    alice.util_set_model("fake")
    with pytest.raises(RuntimeError) as raised:
        alice.txt2img(prompt="x", sampler_name="No Such Sampler", **SIZE)
    assert raised.value.args[0] == 404 and "Sampler not found" in raised.value.args[1]


def test_img2img_and_inpaint_keep_the_pixels_outside_the_mask(live):
    api = client(live)
    picture = gradient(64, 64)
    plain = api.img2img(images=[picture], prompt="a painting", denoising_strength=0.5, seed=3, **SIZE)
    assert plain.images[0].size == (64, 64) and plain.info["denoising_strength"] == 0.5
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))  # white = repaint
    inpainted = api.img2img(images=[picture], mask_image=mask, prompt="a window", inpainting_fill=1,
                            inpaint_full_res=True, inpaint_full_res_padding=4, mask_blur=2, seed=3, **SIZE)
    out = np.asarray(inpainted.images[0].convert("RGB"))
    keep = np.asarray(mask) == 0
    assert (out[keep] == np.asarray(picture)[keep]).all()
    assert not (out[32, 32] == np.asarray(picture)[32, 32]).all()  # the masked middle was repainted
    assert job_of(live, inpainted).request.mode.value == "inpaint"


def test_controlnet_unit_reaches_the_job(live):
    api = client(live)
    unit = webuiapi.ControlNetUnit(image=gradient(64, 64), module="canny", model="canny [a1b2c3d4]",
                                   weight=0.7)
    # A fresh alwayson_scripts: webuiapi adds the units to the dict it is given, and its default
    # is one shared dict, so every later call of this process would carry the unit too.
    result = api.txt2img(prompt="a house", controlnet_units=[unit], alwayson_scripts={}, **SIZE)
    (control,) = job_of(live, result).request.controlnets
    assert (control.name, control.scale, control.preprocess.value) == ("canny", 0.7, "canny")
    assert api.controlnet_model_list() == ["canny"] and "canny" in api.controlnet_module_list()


def test_progress_while_running_then_interrupt_answers_200_with_what_it_has(live):
    alice, bob = client(live, "alice"), client(live, "bob")
    assert alice.get_progress()["progress"] == 0 and alice.get_progress()["state"]["job_count"] == 0
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault(
        "result", alice.txt2img(prompt="slow lighthouse", width=64, height=64, steps=100)))
    worker.start()
    deadline = time.monotonic() + 10
    seen = alice.get_progress()
    while not (seen["state"]["sampling_step"] and seen["current_image"]) and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = alice.get_progress()
    assert seen["state"]["job_count"] == 1 and 0 < seen["progress"] < 1
    assert seen["state"]["sampling_steps"] == 100
    assert base64.b64decode(seen["current_image"]) == PREVIEW  # the running job's live preview
    assert bob.get_progress()["state"]["job_count"] == 0  # bob sees only his own jobs
    assert bob.interrupt() == {}  # and cannot stop alice's
    assert alice.interrupt() == {}
    worker.join(timeout=20)
    result = outcome["result"]
    assert result.images == [] and result.info["interrupted"] is True and result.info["infotexts"] == []
    assert alice.get_progress()["state"]["job_count"] == 0


def test_wrong_password_is_401_with_a_basic_challenge(live):
    server = live[0]
    response = httpx.get(f"{server.url}/sdapi/v1/sd-models", auth=("alice", "wrong"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert set(response.json()) >= {"error", "detail", "body", "errors"}

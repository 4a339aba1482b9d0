"""The A1111 dialect over real HTTP, replaying what Open WebUI, SillyTavern and LibreChat send
(``/work/shared/specs/a1111.md``, from their sources): extra keys, nulls, a lower-case
scheduler, ``override_settings``, an empty ``Authorization`` header. Open mode (no keys,
loopback), a fake backend; plus error bodies, "nothing queued" for bad input, listings and
``/internal/progress`` with ``force_task_id``.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image

from pixelmill.core.types import JobStatus
from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend, png
from tests.support.live import LiveServer

EMPTY_AUTH = {"authorization": ""}  # Open WebUI without AUTOMATIC1111_API_AUTH


class SlowOnRequest(FakeBackend):
    """0.05 s a step, with a live preview each step, for prompts starting "slow"; instant otherwise."""

    async def generate_batch(self, requests, *, on_progress=None, cancel=None):
        slow = requests[0].prompt.startswith("slow")
        self.step_s = 0.05 if slow else 0.0

        def report(progress):
            preview = {"previews": {0: png(8, 8, (0, 9, 9))}}
            on_progress(progress.model_copy(update=preview) if slow else progress)

        report_to = report if on_progress else None
        return await super().generate_batch(requests, on_progress=report_to, cancel=cancel)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("a1111-http")
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "checkpoints" / "juggernaut.safetensors").write_bytes(b"x")
    settings = Settings(models_dir=root / "models", data_dir=root / "data", model="fake", default_steps=2)
    app = build_app(settings, backend=lambda s, r: SlowOnRequest())
    with LiveServer(app) as server:
        yield server.url, app.state.services.store


def post(url: str, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=30, **kwargs)


def job_count(store) -> int:
    return sum(store.count(status) for status in JobStatus)


def test_open_webui_shape_with_an_empty_authorization_header(live):
    url, _ = live
    options = httpx.get(f"{url}/sdapi/v1/options", headers=EMPTY_AUTH).json()  # its "URL check"
    titles = [model["title"] for model in httpx.get(f"{url}/sdapi/v1/sd-models", headers=EMPTY_AUTH).json()]
    assert options["sd_model_checkpoint"] in titles
    options["sd_model_checkpoint"] = "juggernaut"  # Open WebUI posts the whole dict back
    changed = post(url, "/sdapi/v1/options", options, headers=EMPTY_AUTH)
    assert changed.status_code == 200 and changed.json() is None
    assert httpx.get(f"{url}/sdapi/v1/options").json()["sd_model_checkpoint"] == "juggernaut"
    body = {"prompt": "a fox", "batch_size": 1, "width": 64, "height": 64, "steps": 2, "negative_prompt": "",
            "cfg_scale": None, "sampler_name": "Euler a", "scheduler": "Automatic", "hr_fix": None}
    response = post(url, "/sdapi/v1/txt2img", body, headers=EMPTY_AUTH)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.format == "PNG" and image.size == (64, 64)
    assert json.loads(response.json()["info"])["job_id"]
    post(url, "/sdapi/v1/options", {"sd_model_checkpoint": "fake"})


def test_sillytavern_shape(live):
    url, store = live
    body = {
        "prompt": "a knight", "negative_prompt": "blurry", "sampler_name": "DPM++ 2M", "scheduler": "karras",
        "steps": 2, "cfg_scale": 7, "width": 64, "height": 64, "restore_faces": False, "enable_hr": False,
        "hr_upscaler": "Latent", "hr_scale": 2, "denoising_strength": 0.7, "hr_second_pass_steps": 0,
        "override_settings": {"CLIP_stop_at_last_layers": 2}, "override_settings_restore_afterwards": True,
        "clip_skip": 2, "save_images": True, "send_images": True, "do_not_save_grid": False,
        "do_not_save_samples": False, "url": "http://127.0.0.1:7860", "auth": "",
    }
    response = post(url, "/sdapi/v1/txt2img", body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    job = store.get(info["job_id"])
    assert (job.request.clip_skip, job.request.scheduler) == (1, "dpmpp_2m_karras")  # diffusers' N - 1
    idle = httpx.get(f"{url}/sdapi/v1/progress?skip_current_image=true").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0  # what it waits for after a switch


def test_librechat_shape_reads_size_seed_and_the_last_infotext_line(live):
    url, _ = live
    body = {"prompt": "a robot", "negative_prompt": "text", "cfg_scale": 4.5, "steps": 2, "width": 64,
            "height": 64, "seed": 99}
    info = json.loads(post(url, "/sdapi/v1/txt2img", body).json()["info"])
    assert (info["width"], info["height"], info["seed"]) == (64, 64, 99)
    last = info["infotexts"][0].split("\n")[-1]
    assert last.startswith("Steps: 2, Sampler: ") and "Seed: 99" in last and "Size: 64x64" in last


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Nope"}, 404, "sampler_name"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": True}, 422, "enable_hr"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "script_name": "x/y/z plot"}, 422, "script_name"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "alwayson_scripts": {"animatediff": {"args": [False]}}}, 422,
     "alwayson_scripts.animatediff"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "width": 65, "height": 64}, 422, "width"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 0}, 422, "batch_size"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": "many"}, 422, "steps"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "seed": 2**33}, 422, "seed"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}}, 404,
     "override_settings.sd_model_checkpoint"),
    ("/sdapi/v1/img2img", {"prompt": "x"}, 422, "init_images"),
    ("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["bm90IGFuIGltYWdl"]}, 422, "init_images[0]"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "nope"}, 404, "sd_model_checkpoint"),
])
def test_bad_input_is_a_4xx_in_a1111_shape_naming_the_field_queuing_nothing(live, path, body, status, param):
    url, store = live
    before = job_count(store)
    response = post(url, path, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) >= {"error", "detail", "body", "errors"} and error["param"] == param
    assert job_count(store) == before


def test_listings(live):
    url, _ = live
    client = httpx.Client(base_url=url)  # one connection: a new client per call costs ~0.1 s
    get = lambda path: client.get(path).json()  # noqa: E731
    model = get("/sdapi/v1/sd-models")[0]
    assert {"title", "model_name", "hash", "sha256", "filename", "config"} <= set(model)
    assert all({"name", "aliases", "options"} <= set(s) for s in get("/sdapi/v1/samplers"))
    schedulers = get("/sdapi/v1/schedulers")
    assert schedulers[0]["name"] == "automatic" and "karras" in [s["name"] for s in schedulers]
    assert get("/sdapi/v1/scripts") == {"txt2img": ["controlnet"], "img2img": ["controlnet"]}
    assert get("/sdapi/v1/embeddings") == {"loaded": {}, "skipped": {}}
    assert get("/sdapi/v1/sd-vae") == [] and get("/sdapi/v1/upscalers") == [] and get("/sdapi/v1/loras") == []
    assert get("/sdapi/v1/latent-upscale-modes") == [] and get("/sdapi/v1/cmd-flags")["api"] is True
    assert get("/sdapi/v1/memory")["ram"]["total"] > 0
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    assert get("/controlnet/version")["version"] >= 1
    assert get("/controlnet/settings")["control_net_unit_count"] >= 1
    client.close()


def test_internal_progress_follows_a_forced_task_id(live):
    url, _ = live
    ask = {"id_task": "task(mine)", "id_live_preview": -1}
    assert post(url, "/internal/progress", ask).json()["active"] is False
    done = {}
    body = {"prompt": "slow tower", "width": 64, "height": 64, "steps": 60, "force_task_id": "task(mine)"}
    call = lambda: done.setdefault("response", post(url, "/sdapi/v1/txt2img", body))  # noqa: E731
    thread = threading.Thread(target=call)
    thread.start()
    deadline, seen = time.monotonic() + 10, {}
    while not (seen.get("active") and seen.get("live_preview")) and time.monotonic() < deadline:
        seen = post(url, "/internal/progress", {"id_task": "task(mine)", "id_live_preview": -1}).json()
        time.sleep(0.05)
    assert seen["active"] is True and 0 <= seen["progress"] <= 1
    assert seen["live_preview"].startswith("data:image/png;base64,") and seen["id_live_preview"] > 0
    assert httpx.post(f"{url}/sdapi/v1/interrupt").json() == {}  # no need to wait for the end
    thread.join(timeout=20)
    assert done["response"].status_code == 200 and done["response"].json()["images"] == []
    final = post(url, "/internal/progress", {"id_task": "task(mine)", "id_live_preview": -1}).json()
    assert final["completed"] is True and final["active"] is False
    missing = post(url, "/internal/progress", {})
    assert missing.status_code == 422 and missing.json()["param"] == "id_task"


def test_skip_answers_json(live):
    url, _ = live
    response = httpx.post(f"{url}/sdapi/v1/skip")
    assert response.status_code == 200 and response.json() is None

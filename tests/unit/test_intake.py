"""Intake (issue 19: 1, 3, 5): what a request may cost before it is a job, in-process.

Caps are arithmetic and come before any work; decoding runs in the CPU pool and is
bounded per request; bodies are authenticated, bounded and timed before they are read;
a client that hangs up stops its route; a shutdown ends the routes still open.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image

from pixelmill.api.offload import CpuPool, run_cpu, using
from pixelmill.core.errors import PayloadTooLarge
from pixelmill.images.budget import pixel_budget
from pixelmill.images.codecs import decode_upload
from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.asgi import exchange

BASE = "http://127.0.0.1:8000"


@pytest.fixture()
def make_app(tmp_path):
    def make(**settings):
        base = {"models_dir": tmp_path / "models", "data_dir": tmp_path / "data", "workers": 0, "max_queued": 5000}
        return build_app(Settings(**(base | settings)))

    return make


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A 2 KB PNG whose header says 3999×4000 (1-bit, blank): cheap to send, dear to decode."""
    buf = io.BytesIO()
    Image.new("1", (3999, 4000)).save(buf, "PNG")
    return buf.getvalue()


async def _timed(app, method: str, path: str, **kwargs) -> tuple[httpx.Response, float, float]:
    """(response, seconds, the event loop's longest stall meanwhile)."""
    stalls, done = [0.0], asyncio.Event()

    async def tick():
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            stalls.append(time.perf_counter() - start - 0.01)

    ticker = asyncio.create_task(tick())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=120) as client:
        start = time.perf_counter()
        response = await client.request(method, path, **kwargs)
        elapsed = time.perf_counter() - start
    done.set()
    await ticker
    return response, elapsed, max(stalls)


def timed(app, method: str, path: str, **kwargs):
    return asyncio.run(_timed(app, method, path, **kwargs))


# --------------------------------------------------------------------------- batches


def test_a_million_job_batch_is_refused_by_arithmetic(make_app):
    body = {"request": {"prompt": "x", "width": 64, "height": 64}, "prompts": ["p"] * 1000,
            "seeds": {"start": 0, "count": 1000}}
    response, elapsed, _ = timed(make_app(), "POST", "/v1/batches", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "seeds" and "1,000,000" in response.json()["error"]["message"]
    assert elapsed < 2, f"refusing took {elapsed:.1f} s: the batch was expanded first"


def test_images_per_batch_are_capped_counting_n(make_app):
    app = make_app(max_batch_images=10)
    template = {"request": {"prompt": "x", "width": 64, "height": 64, "n": 4}, "prompts": ["a", "b", "c"]}
    response, _, _ = timed(app, "POST", "/v1/batches", json=template)
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompts"
    assert "12" in response.json()["error"]["message"]
    listed = {"requests": [{"prompt": "x", "width": 64, "height": 64, "n": 5}] * 3}
    response, _, _ = timed(app, "POST", "/v1/batches", json=listed)
    assert response.status_code == 400 and response.json()["error"]["param"] == "requests"
    response, _, _ = timed(app, "POST", "/v1/batches", json={"requests": listed["requests"][:2]})
    assert response.status_code == 202 and response.json()["size"] == 2


def test_a_batch_of_decompression_headers_is_refused_within_the_pixel_budget(make_app, bomb_png):
    # The reported attack: 300 copies of a 2 KB PNG that decodes to 16 MP each.
    image = base64.b64encode(bomb_png).decode()
    body = {"requests": [{"prompt": "x", "mode": "img2img", "image": image, "width": 64, "height": 64}] * 300}
    response, elapsed, stall = timed(make_app(max_request_pixels=40_000_000), "POST", "/v1/batches", json=body)
    assert response.status_code == 413, response.text
    assert "40,000,000 pixels" in response.json()["error"]["message"]
    assert elapsed < 15, f"{elapsed:.1f} s: more than the budget was decoded"
    assert stall < 0.5, f"the event loop stalled {stall:.2f} s"


def test_a_template_image_is_decoded_once_for_all_its_jobs(make_app, bomb_png):
    image = base64.b64encode(bomb_png).decode()
    body = {"request": {"prompt": "x", "mode": "img2img", "image": image, "width": 64, "height": 64},
            "prompts": [f"p{i}" for i in range(20)], "seeds": {"start": 7, "count": 5}}
    # 100 jobs × 16 MP would be 1.6 gigapixels; decoded once it is 16 MP, within 20 MP.
    response, _, stall = timed(make_app(max_request_pixels=20_000_000), "POST", "/v1/batches", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["size"] == 100
    assert stall < 0.5, f"the event loop stalled {stall:.2f} s"


# --------------------------------------------------------------------------- decoding


def test_uploads_decode_and_reencode_off_the_event_loop(make_app, monkeypatch):
    import pixelmill.api.uploads as uploads

    threads = []
    real = uploads.reencode_png
    monkeypatch.setattr(uploads, "reencode_png", lambda img: threads.append(threading.current_thread().name) or real(img))
    image, mask = io.BytesIO(), io.BytesIO()
    Image.new("L", (4000, 4000), 90).save(image, "PNG")
    Image.new("L", (4000, 4000), 255).save(mask, "PNG")
    files = {"image": ("i.png", image.getvalue(), "image/png"), "mask": ("m.png", mask.getvalue(), "image/png")}
    # No worker: the sync call would wait, so a 1 s wait bound ends it with 504 after intake.
    app = make_app(sync_timeout_s=1)
    response, _, stall = timed(app, "POST", "/v1/images/edits", files=files,
                               data={"prompt": "x", "mask_mode": "luminance", "size": "64x64"})
    assert response.status_code == 504, response.text
    assert threads and all(name.startswith("pixelmill-cpu") for name in threads), threads
    assert stall < 0.5, f"the event loop stalled {stall:.2f} s on a 16 MP upload"


def test_the_pixel_budget_is_charged_before_decoding(bomb_png):
    with pixel_budget(20_000_000) as budget:
        decode_upload(bomb_png, param="image")
        with pytest.raises(PayloadTooLarge, match="20,000,000 pixels"):
            decode_upload(bomb_png, param="mask")
    assert budget.used == 3999 * 4000
    decode_upload(bomb_png, param="image")  # outside a request: no budget


def test_cpu_pool_is_bounded_and_carries_the_request_context(bomb_png):
    pool, running, peak, lock = CpuPool(2), [0], [0], threading.Lock()

    def work():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        decode_upload(bomb_png, param="image")  # charged to the caller's budget
        return threading.current_thread().name

    async def main():
        with pixel_budget(10**9) as budget, using(pool):
            names = await asyncio.gather(*(run_cpu(work) for _ in range(6)))
        return names, budget.used

    names, used = asyncio.run(main())
    pool.shutdown()
    assert peak[0] == 2 and all(name.startswith("pixelmill-cpu") for name in names)
    assert used == 6 * 3999 * 4000


# --------------------------------------------------------------------------- bodies


def _middleware(app):
    """The app's RequestContextMiddleware instance (built on the first request)."""
    from pixelmill.api.middleware import RequestContextMiddleware

    layer = app.middleware_stack
    while not isinstance(layer, RequestContextMiddleware):
        layer = layer.app
    return layer


def test_with_keys_on_a_keyless_body_is_refused_before_it_is_read(make_app):
    app = make_app()
    app.state.auth.keys.create("team")
    headers = [("content-type", "multipart/form-data; boundary=x"), ("content-length", str(20 << 20))]
    result = asyncio.run(exchange(app, "POST", "/v1/images/edits", headers=headers, parts=[b"x" * 65536] * 320))
    assert result.status == 401 and result.reads == 0
    assert result.headers["connection"] == "close"


def test_body_bytes_in_flight_are_bounded_across_requests(make_app):
    app = make_app(max_body_bytes_in_flight=1_000_000, body_timeout_s=1)
    headers = [("content-type", "application/json"), ("content-length", "600000")]

    async def main():
        slow = asyncio.create_task(exchange(app, "POST", "/v1/jobs", headers=headers, parts=[b"{"], stall=True))
        await asyncio.sleep(0.2)  # the slow one holds its 600 KB
        second = await exchange(app, "POST", "/v1/jobs", headers=headers, parts=[b"{" * 600000])
        return await slow, second

    slow, second = asyncio.run(main())
    assert second.status == 429 and second.reads == 0 and second.headers["retry-after"]
    assert slow.status == 408 and slow.headers["connection"] == "close"
    assert b"did not arrive within 1 s" in slow.body
    assert _middleware(app).bodies.held == 0


def test_a_body_over_the_limit_is_refused_while_it_streams(make_app):
    app = make_app(max_json_bytes=1000)
    parts = [b" " * 600] * 5  # no Content-Length (chunked): counted as it arrives
    result = asyncio.run(exchange(app, "POST", "/v1/jobs", headers=[("content-type", "application/json"),
                                                                    ("transfer-encoding", "chunked")], parts=parts))
    assert result.status == 413 and result.reads == 2
    assert _middleware(app).bodies.held == 0


def test_a_large_body_reaches_the_route_intact_in_slices(make_app):
    # 2 MB of JSON: replayed to the route in slices, parsed whole (an unknown field proves it).
    app = make_app(max_json_bytes=4 << 20)
    body = json.dumps({"prompt": "x", "width": 64, "height": 64, "pad": "y" * (2 << 20)}).encode()
    result = asyncio.run(exchange(app, "POST", "/v1/jobs", headers=[("content-type", "application/json"),
                                                                    ("content-length", str(len(body)))], parts=[body]))
    assert result.status == 400 and json.loads(result.body)["error"]["param"] == "pad"


# --------------------------------------------------------------------------- disconnects, shutdown

SYNC = json.dumps({"prompt": "a lighthouse", "size": "256x256"}).encode()
SYNC_HEADERS = [("content-type", "application/json"), ("content-length", str(len(SYNC)))]


def test_a_client_that_hangs_up_ends_its_sync_call_but_not_its_job(make_app):
    app = make_app()  # no worker: the call would wait sync_timeout_s (600 s)
    start = time.perf_counter()
    result = asyncio.run(exchange(app, "POST", "/v1/images/generations", headers=SYNC_HEADERS, parts=[SYNC],
                                  hang_up_after=1.0, timeout=5))
    assert result.status is None and time.perf_counter() - start < 5
    jobs, _ = app.state.services.store.list_jobs(limit=10)
    assert [job.status.value for job in jobs] == ["queued"]


def test_a_shutdown_ends_an_open_sync_call_with_503(make_app):
    app = make_app()
    result = asyncio.run(exchange(app, "POST", "/v1/images/generations", headers=SYNC_HEADERS, parts=[SYNC],
                                  cancel_after=1.0, timeout=5))
    assert result.status == 503 and result.headers["retry-after"]
    assert json.loads(result.body)["error"]["code"] == "shutting_down"

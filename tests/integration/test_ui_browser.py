"""The web UI (``/ui`` playground, ``/ui/gallery``) in a real headless Chromium.

One app for the module (``build_app`` on a fake backend, the demo models directory for the
model, LoRA and ControlNet listings, API keys on), served on a loopback socket, and one
browser for every test. The fake backend writes the engine's infotext into its PNGs and
reports a live preview with each step, so the pages see what a real server sends.
Without Chromium the module skips (fails under ``CI=true``), as the dashboard test does.
"""

from __future__ import annotations

import io
import time
import zipfile

import httpx
import pytest
from PIL import Image

from pixelmill.auth.keys import Scope
from pixelmill.core.samplers import sampler_label
from pixelmill.core.types import OutputFormat
from pixelmill.images.codecs import encode_image, generation_infotext
from pixelmill.server import build_app
from pixelmill.settings import Settings
from tests.support.backends.base import FakeBackend, png
from tests.support.browser import chromium
from tests.support.live import LiveServer

STEP_S = 0.03
"""Each fake step: a 4-step job takes 0.12 s, a 150-step one 4.5 s (long enough to cancel)."""


class InfotextBackend(FakeBackend):
    """The fake backend with the engine's PNG infotext and a live preview at every step;
    it keeps the requests it ran (``seen``) so tests can read the images a page sent."""

    PREVIEW = png(16, 16, (200, 40, 40))

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list = []

    def image(self, request, index: int) -> bytes:
        width, height, seed = request.width or 64, request.height or 64, max(request.seed, 0) + index
        text = generation_infotext(request, model="demo", sampler=sampler_label(request.scheduler, "EulerDiscreteScheduler"),
                                   seed=seed, width=width, height=height, version="test")
        return encode_image(Image.new("RGB", (width, height), (90, 120, 160)), OutputFormat.png, parameters=text)

    async def generate_batch(self, requests, *, on_progress=None, cancel=None):
        self.seen.extend(requests)

        def with_preview(progress):
            on_progress(progress.model_copy(update={"previews": {i: self.PREVIEW for i in range(len(requests))}}))

        return await super().generate_batch(requests, on_progress=with_preview if on_progress else None, cancel=cancel)


@pytest.fixture(scope="module")
def served(demo_models, tmp_path_factory):
    settings = Settings(models_dir=demo_models, model="demo", data_dir=tmp_path_factory.mktemp("ui"),
                        progress_interval_s=0.05, heartbeat_s=0.2, preview_steps=1, default_steps=4)
    backend = InfotextBackend(step_s=STEP_S)
    app = build_app(settings, backend=lambda s, r: backend)
    keys = app.state.auth.keys
    tokens = {"generate": keys.create("ui-user", scope=Scope.generate)[1],
              "admin": keys.create("ui-admin", scope=Scope.admin)[1]}
    with LiveServer(app) as live:
        yield live, tokens, backend


@pytest.fixture(scope="module")
def browser():
    with chromium("web UI", "--hide-scrollbars") as driver:
        yield driver


def by_id(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def wait(driver, condition, timeout: float = 10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def open_page(driver, url: str, path: str, key: str | None) -> None:
    """Load ``path`` with ``key`` in the tab's sessionStorage (None: no key), until the page is ready."""
    driver.get(f"{url}/ui/assets/ui.css")  # same origin, no script: set the storage before the page runs
    driver.execute_script("sessionStorage.clear(); if (arguments[0]) sessionStorage.setItem('pixelmill-api-key', arguments[0]);", key)
    driver.get(f"{url}{path}")
    if key:
        wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "true")


def api(url: str, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10, **kwargs)


def settled(url: str, key: str, job_ids: list[str], timeout: float = 20) -> None:
    """Wait until every job has finished (so the gallery shows its images)."""
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        while api(url, key, "GET", f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"job {job_id} did not finish in {timeout} s"
            time.sleep(0.05)


def fill(driver, element_id: str, text: str) -> None:
    field = by_id(driver, element_id)
    field.clear()
    field.send_keys(text)


def choose(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, element_id)).select_by_value(value)


def submit_and_wait(driver, status: str = "succeeded", timeout: float = 15):
    """Click Generate; the newest job card once it reaches ``status``."""
    from selenium.webdriver.common.by import By

    before = len(driver.find_elements(By.CSS_SELECTOR, "#job-list li.job"))
    by_id(driver, "generate").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#job-list li.job")) > before, timeout)
    card = driver.find_element(By.CSS_SELECTOR, "#job-list li.job")
    wait(driver, lambda d: card.get_attribute("data-status") == status, timeout)
    return card


def test_pages_are_open_but_serve_only_their_own_files(served):
    live, tokens, _ = served
    for path in ("/ui", "/ui/gallery", "/ui/assets/ui-api.js", "/ui/config.json"):
        response = httpx.get(f"{live.url}{path}", timeout=10)  # no key: the pages hold no data
        assert response.status_code == 200, path
    page = httpx.get(f"{live.url}/ui", timeout=10)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "https://" not in page.text and "http://" not in page.text  # nothing from a CDN
    assert httpx.get(f"{live.url}/ui/assets/..%2Fcost.py", timeout=10).status_code == 404
    assert httpx.get(f"{live.url}/ui/assets/dashboard.js", timeout=10).status_code == 404
    assert httpx.get(f"{live.url}/v1/jobs", timeout=10).status_code == 401  # the data they fetch is not open
    config = httpx.get(f"{live.url}/ui/config.json", timeout=10).json()
    assert "euler_a" in config["schedulers"] and config["default_steps"] == 4


def test_with_keys_on_the_pages_ask_for_a_key_and_hide_admin_links_from_a_generate_key(served, browser):
    live, tokens, _ = served
    open_page(browser, live.url, "/ui", None)
    form = by_id(browser, "key-form")
    wait(browser, lambda d: form.is_displayed())
    assert "needs an API key" in by_id(browser, "key-reason").text
    assert browser.execute_script("return document.querySelectorAll('#model option').length") == 1  # nothing loaded

    fill(browser, "api-key", "pm_wrong")
    form.submit()
    wait(browser, lambda d: "refused" in by_id(d, "key-reason").text)
    assert "invalid or revoked" in by_id(browser, "key-reason").text

    fill(browser, "api-key", tokens["generate"])
    form.submit()
    wait(browser, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "true")
    assert not form.is_displayed()
    models = browser.execute_script("return [...document.querySelectorAll('#model option')].map(o => o.value)")
    assert "demo" in models
    assert not by_id(browser, "admin-link").is_displayed()  # a generate key: no dashboard link
    assert browser.execute_script("return sessionStorage.getItem('pixelmill-api-key')") == tokens["generate"]

    open_page(browser, live.url, "/ui/gallery", tokens["admin"])
    assert by_id(browser, "admin-link").is_displayed()


def test_generate_from_the_playground_with_a_lora_and_see_it_in_the_gallery(served, browser):
    from selenium.webdriver.common.by import By

    live, tokens, _ = served
    open_page(browser, live.url, "/ui", tokens["generate"])
    prompt = "a (lighthouse:1.3) at dusk, [fog]"
    fill(browser, "prompt", prompt)
    fill(browser, "negative_prompt", "blurry")
    choose(browser, "size-preset", "64x64")
    fill(browser, "steps", "4")
    fill(browser, "guidance", "6.5")
    choose(browser, "scheduler", "euler_a")
    fill(browser, "n", "2")
    browser.find_element(By.CSS_SELECTOR, "input[name=seed-mode][value=fixed]").click()
    fill(browser, "seed", "1234")
    choose(browser, "lora-pick", "demo-style")
    by_id(browser, "lora-add").click()
    weight = browser.find_element(By.CSS_SELECTOR, "#lora-list li[data-name=demo-style] input")
    weight.clear()
    weight.send_keys("0.8")
    card = submit_and_wait(browser)

    job_id = card.get_attribute("data-job-id")
    events = card.get_attribute("data-events").split()
    assert events[-1] == "succeeded" and "progress" in events
    seeds = [img.get_attribute("alt") for img in card.find_elements(By.CSS_SELECTOR, ".job-results img")]
    assert seeds == [f"image 1 of job {job_id}, seed 1234", f"image 2 of job {job_id}, seed 1235"]
    assert browser.execute_script("return arguments[0].naturalWidth", card.find_element(By.CSS_SELECTOR, ".job-results img")) == 64
    job = api(live.url, tokens["generate"], "GET", f"/v1/jobs/{job_id}").json()
    assert (job["width"], job["steps"], job["images"]) == (64, 4, 2)

    open_page(browser, live.url, "/ui/gallery", tokens["generate"])
    first = browser.find_element(By.CSS_SELECTOR, "#gallery-list li.card")
    assert first.get_attribute("data-job-id") == job_id  # newest first
    wait(browser, lambda d: first.get_attribute("data-infotext") == "yes")
    first.find_element(By.TAG_NAME, "summary").click()
    infotext = first.find_element(By.CSS_SELECTOR, "pre.infotext").text
    assert infotext.startswith(prompt + " <lora:demo-style:0.8>\nNegative prompt: blurry\nSteps: 4, ")
    assert "Seed: 1234" in infotext and "CFG scale: 6.5" in infotext
    assert first.find_element(By.CSS_SELECTOR, ".card-title").text == prompt


def test_progress_and_previews_arrive_and_cancel_stops_the_job(served, browser):
    from selenium.webdriver.common.by import By

    live, tokens, _ = served
    open_page(browser, live.url, "/ui", tokens["generate"])
    fill(browser, "prompt", "a long one")
    choose(browser, "size-preset", "64x64")
    fill(browser, "steps", "150")
    by_id(browser, "generate").click()
    card = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#job-list li.job"))
    bar = card.find_element(By.TAG_NAME, "progress")
    wait(browser, lambda d: int(bar.get_attribute("value") or 0) >= 3)
    wait(browser, lambda d: card.find_element(By.CSS_SELECTOR, ".job-preview").get_attribute("src").startswith("data:image/"))
    assert bar.get_attribute("max") == "150"
    card.find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait(browser, lambda d: card.get_attribute("data-status") == "canceled")
    events = card.get_attribute("data-events").split()
    assert events[0] in ("queued", "started") and "preview" in events and events[-1] == "canceled"
    job = api(live.url, tokens["generate"], "GET", f"/v1/jobs/{card.get_attribute('data-job-id')}").json()
    assert job["status"] == "canceled" and job["progress"]["step"] < 150


def test_use_these_parameters_fills_the_playground_and_reuse_takes_the_last_seed(served, browser):
    from selenium.webdriver.common.by import By

    live, tokens, _ = served
    body = {"prompt": "a red cube <lora:demo-style:0.5>", "negative_prompt": "dull", "width": 72, "height": 64,
            "steps": 3, "guidance": 4.0, "seed": 77, "scheduler": "heun"}
    job = api(live.url, tokens["generate"], "POST", "/v1/jobs", json=body).json()
    settled(live.url, tokens["generate"], [job["id"]])
    open_page(browser, live.url, "/ui/gallery", tokens["generate"])
    card = browser.find_element(By.CSS_SELECTOR, f"#gallery-list li[data-job-id='{job['id']}']")
    wait(browser, lambda d: card.get_attribute("data-infotext") == "yes", 15)
    card.find_element(By.CSS_SELECTOR, "button.reuse").click()
    wait(browser, lambda d: "filled in from the gallery" in by_id(d, "status-line").text)
    values = browser.execute_script("""
      const v = (id) => document.getElementById(id).value;
      return {prompt: v('prompt'), negative: v('negative_prompt'), width: v('width'), height: v('height'),
              steps: v('steps'), guidance: v('guidance'), seed: v('seed'), scheduler: v('scheduler'), model: v('model'),
              loras: [...document.querySelectorAll('#lora-list li')].map(li => [li.dataset.name, li.querySelector('input').value])};
    """)
    assert values == {"prompt": "a red cube", "negative": "dull", "width": "72", "height": "64", "steps": "3",
                      "guidance": "4", "seed": "77", "scheduler": "heun", "model": "demo", "loras": [["demo-style", "0.5"]]}
    card = submit_and_wait(browser)  # the same parameters again: the same seed
    assert card.find_element(By.CSS_SELECTOR, ".job-results figcaption").text.startswith("seed 77")

    browser.find_element(By.CSS_SELECTOR, "input[name=seed-mode][value=random]").click()
    card = submit_and_wait(browser)
    random_seed = int(card.find_element(By.CSS_SELECTOR, ".job-results figcaption").text.split()[1])
    assert by_id(browser, "last-seed").text == str(random_seed)
    by_id(browser, "seed-reuse").click()  # "reuse the last": the random seed of the job before
    card = submit_and_wait(browser)
    assert card.find_element(By.CSS_SELECTOR, ".job-results figcaption").text.split()[1] == str(random_seed)


def test_gallery_pages_filters_and_downloads_a_batch_zip(served, browser):
    from selenium.webdriver.common.by import By

    live, tokens, _ = served
    batch = api(live.url, tokens["generate"], "POST", "/v1/batches", json={
        "request": {"prompt": "x", "width": 64, "height": 64, "steps": 2},
        "prompts": ["a zebra crossing", "a blue ball"], "seeds": {"start": 5, "count": 7}}).json()
    settled(live.url, tokens["generate"], batch["job_ids"])
    open_page(browser, live.url, "/ui/gallery", tokens["generate"])
    cards = browser.find_elements(By.CSS_SELECTOR, "#gallery-list li.card")
    assert len(cards) == 12 and by_id(browser, "older").is_enabled()
    by_id(browser, "older").click()
    wait(browser, lambda d: by_id(d, "page-label").text == "page 2")
    second = [c.get_attribute("data-job-id") for c in browser.find_elements(By.CSS_SELECTOR, "#gallery-list li.card")]
    assert not set(second) & set(batch["job_ids"][7:])  # the newest (the batch's last seven) were on page 1

    fill(browser, "filter-text", "ZEBRA")
    by_id(browser, "filters").submit()
    wait(browser, lambda d: by_id(d, "page-label").text == "page 1" and "scanned" in by_id(d, "filter-note").text)
    wait(browser, lambda d: all(c.get_attribute("data-infotext") for c in d.find_elements(By.CSS_SELECTOR, "#gallery-list li.card")))
    found = {c.get_attribute("data-job-id") for c in browser.find_elements(By.CSS_SELECTOR, "#gallery-list li.card")}
    assert found == set(batch["job_ids"][:7])  # the seven zebra jobs, though they span two listing pages

    zip_button = browser.find_element(By.XPATH, "//li[@class='card'][1]//button[text()='Batch ZIP']")
    browser.execute_script("""
      window.savedZip = null;  // what the page saves: the blob it makes a URL of, and the file name
      const create = URL.createObjectURL;
      URL.createObjectURL = (blob) => {
        blob.arrayBuffer().then((b) => { window.savedZip = [window.savedName, Array.from(new Uint8Array(b))]; });
        return create(blob);
      };
      HTMLAnchorElement.prototype.click = function () { window.savedName = this.download; };
    """)
    zip_button.click()
    name, data = wait(browser, lambda d: d.execute_script("return window.savedZip"))
    assert name == f"{batch['id']}.zip"
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 14

    browser.find_element(By.XPATH, "//li[@class='card'][1]//button[text()='Whole batch']").click()
    wait(browser, lambda d: by_id(d, "filter-text").get_attribute("value") == batch["id"]
         and len(d.find_elements(By.CSS_SELECTOR, "#gallery-list li.card")) == 12)
    by_id(browser, "older").click()
    wait(browser, lambda d: by_id(d, "page-label").text == "page 2")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery-list li.card")) == 2)


def _mask(request) -> Image.Image:
    return Image.open(io.BytesIO(request.mask_image)).convert("L")


def test_paint_a_mask_with_brush_and_eraser_and_inpaint_then_outpaint(served, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    live, tokens, backend = served
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(photo)
    open_page(browser, live.url, "/ui", tokens["generate"])
    fill(browser, "prompt", "a red roof")
    fill(browser, "steps", "2")
    by_id(browser, "init-image").send_keys(str(photo))
    canvas = wait(browser, lambda d: by_id(d, "mask-canvas").is_displayed() and by_id(d, "mask-canvas"))
    browser.execute_script(  # range inputs: set them as a user's drag does
        "for (const [id, v] of [['strength', 0.5], ['brush-size', 16]]) {"
        "  const s = document.getElementById(id); s.value = v; s.dispatchEvent(new Event('input')); }")
    submit_and_wait(browser)  # no mask: image to image with the strength chosen
    request = backend.seen[-1]
    assert (request.mode.value, request.strength, request.mask_image) == ("img2img", 0.5, None)
    assert Image.open(io.BytesIO(request.init_image)).convert("RGB").getpixel((5, 5)) == (10, 200, 10)
    by_id(browser, "mask-on").click()
    scale = canvas.size["width"] / 64  # CSS pixels per image pixel
    # A horizontal stroke through the middle (image x 12..52), then the eraser over its right end.
    ActionChains(browser).move_to_element_with_offset(canvas, int(-20 * scale), 0).click_and_hold() \
        .move_by_offset(int(40 * scale), 0).release().perform()
    browser.find_element(By.CSS_SELECTOR, "input[name=mask-tool][value=eraser]").click()
    ActionChains(browser).move_to_element_with_offset(canvas, int(14 * scale), 0).click_and_hold() \
        .move_by_offset(int(8 * scale), 0).release().perform()
    card = submit_and_wait(browser)
    job = api(live.url, tokens["generate"], "GET", f"/v1/jobs/{card.get_attribute('data-job-id')}").json()
    assert job["mode"] == "inpaint"
    mask = _mask(backend.seen[-1])
    assert mask.size == (64, 64)
    assert mask.getpixel((20, 32)) == 255 and mask.getpixel((32, 32)) == 255  # painted
    assert mask.getpixel((50, 32)) == 0  # painted, then erased
    assert mask.getpixel((32, 5)) == 0 and mask.getpixel((2, 60)) == 0  # never painted

    by_id(browser, "mask-clear").click()
    by_id(browser, "mask-on").click()  # no painted mask: only the new border is repainted
    fill(browser, "outpaint", "8")
    card = submit_and_wait(browser)
    request = backend.seen[-1]
    assert request.mode.value == "inpaint" and (request.width, request.height) == (80, 80)
    mask = _mask(request)
    assert mask.getpixel((3, 40)) == 255 and mask.getpixel((76, 76)) == 255 and mask.getpixel((40, 40)) == 0
    init = Image.open(io.BytesIO(request.init_image)).convert("RGB")
    assert init.getpixel((40, 40)) == (10, 200, 10)  # the photo, centred


def test_pages_fit_a_phone_screen_and_label_every_control(served, browser):
    live, tokens, _ = served
    browser.set_window_size(390, 844)
    try:
        for path in ("/ui", "/ui/gallery"):
            open_page(browser, live.url, path, tokens["generate"])
            overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, (path, overflow)  # one column, nothing wider than the screen
            unlabeled = browser.execute_script("""
              return [...document.querySelectorAll('input, select, textarea, canvas')]
                .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
                .map(el => el.id || el.outerHTML.slice(0, 80));
            """)
            assert unlabeled == [], (path, unlabeled)
    finally:
        browser.set_window_size(1280, 900)


def test_controlnet_with_an_uploaded_image_and_a_preprocessor(served, browser, tmp_path):
    live, tokens, backend = served
    sketch = tmp_path / "sketch.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(sketch)
    open_page(browser, live.url, "/ui", tokens["generate"])
    fill(browser, "prompt", "a glass house")
    choose(browser, "size-preset", "64x64")
    fill(browser, "steps", "2")
    choose(browser, "control-model", "demo-canny")
    by_id(browser, "generate").click()  # no control image yet: the page says which field is missing
    wait(browser, lambda d: "choose a control image" in by_id(d, "status-line").text)
    assert by_id(browser, "control-image").get_attribute("aria-invalid") == "true"
    by_id(browser, "control-image").send_keys(str(sketch))
    choose(browser, "control-preprocess", "canny")
    fill(browser, "control-scale", "0.6")
    submit_and_wait(browser)
    (control,) = backend.seen[-1].controlnets
    assert (control.name, control.preprocess.value, control.scale) == ("demo-canny", "canny", 0.6)

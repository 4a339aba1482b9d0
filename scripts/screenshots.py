"""Make docs/playground.png and docs/gallery.png: the web UI on the demo model, in headless Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs]

It writes the demo models into a temporary folder, serves pixelmill on a free loopback
port in this process (the real engine, 128 px, 4 steps), makes a few images through the
API and one through the playground's form, then saves what the browser shows. Needs
Debian's ``chromium`` and ``chromium-driver`` (``scripts/bootstrap.sh --test``). Nothing is
downloaded; nothing but 127.0.0.1 is contacted. The demo model's images are noise: the
screenshots show the pages, not a model.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from pixelmill.engine.demo import write_demo_models
from pixelmill.server import build_app
from pixelmill.settings import Settings

PROMPTS = ["a lighthouse at dusk, (dramatic sky:1.2)", "a red fox in snow", "a glass house in a forest",
           "a bowl of ramen, studio light"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(settings: Settings) -> tuple[uvicorn.Server, str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # /health is 200 once the model has loaded
        try:
            if server.started and httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready in 300 s")


def _workload(url: str) -> None:
    """A few finished jobs for the gallery: one with a LoRA, one batch, one canceled."""
    common = {"width": 128, "height": 128, "steps": 4}
    jobs = [httpx.post(f"{url}/v1/jobs", json={"prompt": p, "seed": 40 + i, **common}, timeout=30).json()["id"]
            for i, p in enumerate(PROMPTS)]
    jobs.append(httpx.post(f"{url}/v1/jobs", json={"prompt": "a lighthouse, ink drawing", "n": 2, **common,
                                                   "loras": [{"name": "demo-style", "weight": 0.8}]}, timeout=30).json()["id"])
    batch = httpx.post(f"{url}/v1/batches", json={"request": {"prompt": "x", **common},
                                                  "prompts": ["a blue ball", "a red cube"]}, timeout=30).json()
    jobs += batch["job_ids"]
    for job_id in jobs:
        while httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()["status"] in ("queued", "running"):
            time.sleep(0.2)


def _browser():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--window-size=1280,1200"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def _ready(driver) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "true")


def _screenshots(url: str, out: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = _browser()
    try:
        driver.get(f"{url}/ui")
        _ready(driver)
        driver.find_element(By.ID, "prompt").send_keys("a lighthouse at dusk, (dramatic sky:1.2) BREAK oil painting")
        driver.find_element(By.ID, "negative_prompt").send_keys("blurry, low contrast")
        Select(driver.find_element(By.ID, "size-preset")).select_by_value("128x128")
        driver.find_element(By.ID, "steps").send_keys("4")
        Select(driver.find_element(By.ID, "scheduler")).select_by_value("dpmpp_2m_karras")
        driver.find_element(By.ID, "n").clear()
        driver.find_element(By.ID, "n").send_keys("2")
        Select(driver.find_element(By.ID, "lora-pick")).select_by_value("demo-style")
        driver.find_element(By.ID, "lora-add").click()
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#job-list li.job").get_attribute("data-status") == "succeeded")
        time.sleep(0.5)  # the result images finish loading
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(out / "playground.png"))
        driver.get(f"{url}/ui/gallery")
        _ready(driver)
        WebDriverWait(driver, 30).until(lambda d: all(
            c.get_attribute("data-infotext") for c in d.find_elements(By.CSS_SELECTOR, "#gallery-list li.card")))
        driver.find_element(By.CSS_SELECTOR, "#gallery-list li.card summary").click()
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(out / "gallery.png"))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs (default: docs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixelmill-shots-") as tmp:
        models = Path(tmp) / "models"
        write_demo_models(models, size="tiny")
        settings = Settings(models_dir=models, model="demo", data_dir=Path(tmp) / "data", default_steps=4,
                            progress_interval_s=0.1)
        server, url = _serve(settings)
        try:
            _workload(url)
            _screenshots(url, args.out)
        finally:
            server.should_exit = True
            time.sleep(1)
    print(f"wrote {args.out / 'playground.png'} and {args.out / 'gallery.png'}")


if __name__ == "__main__":
    main()

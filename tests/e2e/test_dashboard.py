"""The dashboard in a real headless Chromium (Debian's, driven by its chromedriver).

Nothing is downloaded: the browser comes from apt (``scripts/bootstrap.sh --test``
installs it when it can). Without it the test skips and says why, except under
``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import httpx
import pytest

from pixelmill.cost.model import crossover_volume, fit_steps_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install chromium chromium-driver (scripts/bootstrap.sh --test does)"
    return None


@pytest.fixture
def browser():
    reason = _missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the dashboard browser test must run in CI: {reason}")
        pytest.skip(reason)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pixelmill-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _page_numbers(driver) -> dict:
    script = """
      const v = (id) => Number(document.getElementById(id).value);
      return {price: v('price'), gpuHour: v('gpu-hour'), rate: v('rate'), overhead: v('overhead'),
              steps: v('steps'), volume: v('volume'), nstar: document.getElementById('nstar').dataset.value,
              nstarText: document.getElementById('nstar').textContent,
              refSteps: Number(document.getElementById('ref-steps').textContent),
              banner: document.getElementById('banner').textContent};
    """
    return driver.execute_script(script)


def test_price_slider_moves_n_star_to_the_python_value(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "p", "size": "64x64"}, timeout=120)
    summary = httpx.get(f"{server.url}/v1/cost/summary", timeout=10).json()
    browser.get(f"{server.url}/dashboard")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    before = _page_numbers(browser)
    assert before["volume"] == summary["trailing_volume"] and before["rate"] == pytest.approx(summary["rate"])

    slider = browser.find_element(By.ID, "price")
    browser.execute_script("arguments[0].value = '0.03'; arguments[0].dispatchEvent(new Event('input'))", slider)
    slider.send_keys(*[Keys.ARROW_RIGHT] * 25)  # a user nudging the slider: 0.03 → 0.0325
    after = _page_numbers(browser)
    assert after["price"] == pytest.approx(0.0325)
    expected = crossover_volume(after["price"], after["gpuHour"], after["rate"], after["overhead"])
    assert float(after["nstar"]) == pytest.approx(expected, rel=1e-12)
    assert after["nstarText"] == f"{round(expected):,} images/month"
    assert f"crossover of {round(expected):,}" in after["banner"]

    # The few-step what-if: moving the steps slider changes r as the Python steps model does.
    steps = browser.find_element(By.ID, "steps")
    steps.send_keys(Keys.HOME)  # 1 step
    moved = _page_numbers(browser)
    rates, weights = {}, {}
    for row in summary["rates"]:
        rates[row["steps"]], weights[row["steps"]] = row["rate"], row["images"]
    model = fit_steps_model(rates, weights)
    rate_at_1 = moved["rate"] * model.rate(1) / model.rate(moved["refSteps"])
    expected = crossover_volume(moved["price"], moved["gpuHour"], rate_at_1, moved["overhead"])
    assert moved["steps"] == 1 and float(moved["nstar"]) == pytest.approx(expected, rel=1e-9)


def test_with_api_keys_the_dashboard_asks_for_an_admin_key(keyed, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, keys = keyed
    summary = httpx.get(f"{server.url}/v1/cost/summary", headers={"Authorization": f"Bearer {keys['admin']}"}).json()
    browser.get(f"{server.url}/dashboard")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    form = browser.find_element(By.ID, "key-form")
    assert form.is_displayed()
    assert "admin API key is needed" in browser.find_element(By.ID, "source").text
    browser.find_element(By.ID, "api-key").send_keys(keys["admin"])
    form.submit()
    WebDriverWait(browser, 10).until(lambda d: not d.find_element(By.ID, "key-form").is_displayed())
    assert _page_numbers(browser)["volume"] == summary["trailing_volume"]

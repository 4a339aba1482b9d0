"""The dashboard in a real headless Chromium (Debian's, driven by its chromedriver).

Nothing is downloaded: the browser comes from apt (``scripts/bootstrap.sh --test``
installs it when it can). Without it the test skips and says why, except under
``CI=true``, where it fails.

The page computes nothing itself: its verdict, ``N*`` and effective ``r`` come from
``/v1/cost/summary`` (with what-if parameters when a slider moved), so these tests check
that the page shows the server's numbers for the page's exact inputs. Set
``PIXELMILL_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to save what the browser shows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from pixelmill.cost.model import crossover_volume, fit_steps_model
from tests.support.browser import chromium
from tests.support.server import ServerProcess

PRICE = 0.000613  # the hosted price of the issue: c just above G/r = 0.000608


@pytest.fixture
def browser():
    with chromium("dashboard", "--hide-scrollbars") as driver:
        yield driver


@pytest.fixture(scope="module")
def priced_server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server whose cost file the test rewrites (the server reads it on every summary)."""
    workdir = tmp_path_factory.mktemp("dashboard")
    cost_file = workdir / "cost.toml"
    cost_file.write_text("")
    proc = ServerProcess(workdir, "--models-dir", str(demo_models), "--model", "demo", "--default-steps", "2",
                         "--cost-config", str(cost_file))
    proc.start()
    yield proc, cost_file
    proc.stop()


def _wait_ready(driver) -> None:
    """Wait until the page has loaded and no what-if request is in flight."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(d) -> bool:
        body = d.find_element(By.TAG_NAME, "body")
        return body.get_attribute("data-ready") == "true" and body.get_attribute("data-pending") != "true"

    WebDriverWait(driver, 15).until(settled)


def _page_numbers(driver) -> dict:
    script = """
      const el = (id) => document.getElementById(id);
      const exact = (id) => el(id) && el(id).dataset.value !== undefined ? el(id).dataset.value : null;
      return {price: exact('price-out'), gpuHour: exact('gpu-hour-out'), overhead: exact('overhead-out'),
              rate: exact('rate'), rateShown: el('rate').value, rateRaw: el('rate').value,
              steps: Number(el('steps').value), volume: Number(el('volume').value),
              priceText: el('price-out') ? el('price-out').textContent : '',
              rateMeasured: el('rate-measured') ? el('rate-measured').textContent : '',
              nstar: el('nstar').dataset.value, nstarText: el('nstar').textContent,
              refSteps: Number(el('ref-steps').textContent), banner: el('banner').textContent};
    """
    return driver.execute_script(script)


def _generate(url: str) -> None:
    for _ in range(2):
        done = httpx.post(f"{url}/v1/images/generations", json={"prompt": "p", "size": "64x64", "n": 2}, timeout=120)
        assert done.status_code == 200, done.text


def _price_just_above_gpu_cost(cost_file: Path, url: str) -> dict:
    """Price the GPU so that G/r = $0.000608 for the measured r, and the hosted API at $0.000613."""
    rate = httpx.get(f"{url}/v1/cost/summary", timeout=10).json()["rate"]
    cost_file.write_text(f"[self_hosted]\ngpu_hour = {0.000608 * rate!r}\noverhead_month = 2000.0\n\n"
                         f'[[offer]]\nprovider = "test"\nmodel = "cheap"\nprice_per_image = {PRICE}\n'
                         "checked = 2026-11-21\n")
    summary = httpx.get(f"{url}/v1/cost/summary", timeout=10).json()
    assert summary["rate"] == rate and summary["reference_price"] == PRICE
    assert summary["verdict"]["crossover"] == pytest.approx(2000 / (PRICE - 0.000608), rel=1e-6)
    return summary


def test_page_verdict_is_the_servers_when_c_is_just_above_g_over_r(priced_server, browser):
    server, cost_file = priced_server
    _generate(server.url)
    summary = _price_just_above_gpu_cost(cost_file, server.url)
    browser.get(f"{server.url}/dashboard")
    _wait_ready(browser)
    page = _page_numbers(browser)
    # One computation: the page says what `cost report` and /v1/cost/summary say.
    assert page["banner"] == summary["verdict"]["message"]
    assert float(page["nstar"]) == summary["verdict"]["crossover"]
    # At their initial positions the controls hold the measured inputs exactly...
    assert float(page["price"]) == PRICE and page["priceText"] == "$0.000613"
    assert float(page["gpuHour"]) == summary["self_hosted"]["gpu_hour"]
    assert float(page["rate"]) == summary["rate"] and page["volume"] == summary["trailing_volume"]
    # ...and show them formatted for people: r to one decimal, not 1973.6854439798658.
    assert re.fullmatch(r"\d+(\.\d)?", page["rateShown"]), page["rateShown"]
    assert re.fullmatch(r"[\d,]+ images/GPU-hour \(measured\)", page["rateMeasured"]), page["rateMeasured"]


def test_typical_prices_with_a_dedicated_fleet(priced_server, browser):
    """The shipped hosted prices, a dedicated GPU price: three curves, the server's verdict."""
    server, cost_file = priced_server
    _generate(server.url)
    cost_file.write_text('[self_hosted]\ngpu_hour = 1.2\noverhead_month = 2000\ngpu_month = 900\n'
                         'compare_to = "stability/stable-image-core"\n')
    summary = httpx.get(f"{server.url}/v1/cost/summary", timeout=10).json()
    browser.set_window_size(1280, 1180)  # the whole page, notes included, in the screenshot
    browser.get(f"{server.url}/dashboard")
    _wait_ready(browser)
    page = _page_numbers(browser)
    assert page["banner"] == summary["verdict"]["message"]
    assert float(page["nstar"]) == summary["verdict"]["crossover"]
    assert browser.execute_script("return document.getElementById('chart').height") > 0
    assert browser.execute_script("return document.getElementById('gateway').hidden")  # no --backends
    shot = os.environ.get("PIXELMILL_DASHBOARD_SCREENSHOT")
    if shot:  # docs/dashboard.png is made this way
        browser.save_screenshot(shot)


def test_sliders_ask_the_server_for_the_pages_exact_inputs(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "p", "size": "64x64"}, timeout=120)
    summary = httpx.get(f"{server.url}/v1/cost/summary", timeout=10).json()
    browser.get(f"{server.url}/dashboard")
    _wait_ready(browser)
    before = _page_numbers(browser)
    assert before["volume"] == summary["trailing_volume"] and float(before["rate"]) == summary["rate"]
    assert before["banner"] == summary["verdict"]["message"]

    slider = browser.find_element(By.ID, "price")
    slider.send_keys(*[Keys.ARROW_RIGHT] * 5)  # a user nudging the slider
    _wait_ready(browser)
    after = _page_numbers(browser)
    price, gpu_hour, overhead = float(after["price"]), float(after["gpuHour"]), float(after["overhead"])
    assert price > float(before["price"])
    expected = crossover_volume(price, gpu_hour, summary["rate"], overhead)
    assert after["nstar"] == "never" if expected is None else float(after["nstar"]) == pytest.approx(expected, rel=1e-12)
    if expected is not None:
        assert after["nstarText"] == f"{round(expected):,} images/month"
        assert f"crossover of {round(expected):,}" in after["banner"]

    # The few-step what-if: moving the steps slider changes r as the Python steps model does.
    browser.find_element(By.ID, "steps").send_keys(Keys.HOME)  # 1 step
    _wait_ready(browser)
    moved = _page_numbers(browser)
    images, seconds = {}, {}
    for row in summary["rates"]:
        images[row["steps"]] = images.get(row["steps"], 0) + row["images"]
        seconds[row["steps"]] = seconds.get(row["steps"], 0.0) + row["gpu_seconds"]
    rates = {s: images[s] * 3600 / seconds[s] for s in images}
    model = fit_steps_model(rates, {s: float(n) for s, n in images.items()})
    rate_at_1 = summary["rate"] * model.rate(1) / model.rate(moved["refSteps"])
    expected = crossover_volume(price, gpu_hour, rate_at_1, overhead)
    assert moved["steps"] == 1
    assert moved["nstar"] == "never" if expected is None else float(moved["nstar"]) == pytest.approx(expected, rel=1e-9)


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
    _wait_ready(browser)
    assert _page_numbers(browser)["volume"] == summary["trailing_volume"]

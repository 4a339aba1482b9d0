"""``/docs`` and ``/redoc`` render in a real headless Chromium with no network but loopback.

FastAPI's stock pages load Swagger UI and ReDoc from a CDN, so on an offline host they
were blank. The browser here resolves no host name but 127.0.0.1 (``--host-resolver-rules``),
so the test holds on a machine with internet too, and Chrome's network log must show no
request that left the server. Like the dashboard test it skips without Chromium, except
under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900",
         # No name resolves but loopback: a page that needs a CDN cannot get one, online or not.
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


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
            pytest.fail(f"the docs browser test must run in CI: {reason}")
        pytest.skip(reason)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pixelmill-docs-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _requested_urls(driver) -> list[str]:
    """URLs of every request the browser sent since the last call (Chrome's network log).

    A request the page's Content-Security-Policy refused is logged too, but never left the
    browser: it is left out.
    """
    urls, refused = {}, set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            refused.add(params["requestId"])
    return [url for request_id, url in urls.items() if request_id not in refused]


def _assert_stayed_local(driver, base: str) -> None:
    urls = _requested_urls(driver)
    assert urls, "the network log recorded nothing"
    # Only the network counts: chrome:// pages (the browser's own new tab) are not fetched.
    network = [u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:"))]
    assert any(u.startswith(base + "/docs/assets/") for u in network), network
    outside = [u for u in network if not u.startswith(base + "/")]
    assert not outside, f"the page fetched from outside the server: {outside}"


def _operations(base: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    return [(method, path) for path, item in spec["paths"].items() for method in item if method in METHODS]


def _wait(driver, condition, what: str, timeout: float = 30) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        text = driver.execute_script("return document.body ? document.body.innerText.slice(0, 500) : ''")
        raise AssertionError(f"{what} never appeared; the page shows: {text!r}") from None


def test_swagger_ui_lists_every_operation_offline(server, browser):
    from selenium.webdriver.common.by import By

    operations = _operations(server.url)
    browser.get(f"{server.url}/docs")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= len(operations),
          f"{len(operations)} operations")
    shown = {(block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.lower(),
              block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"))
             for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")}
    assert set(operations) <= shown, sorted(set(operations) - shown)
    _assert_stayed_local(browser, server.url)


def test_redoc_renders_the_reference_offline(server, browser):
    browser.get(f"{server.url}/redoc")
    # ReDoc shows each operation's path in its right-hand panel once it has rendered the spec.
    _wait(browser, lambda d: "/v1/images/generations" in d.execute_script("return document.body.innerText"),
          "the /v1/images/generations operation")
    _assert_stayed_local(browser, server.url)


def test_assets_are_served_from_a_fixed_table(server):
    js = httpx.get(f"{server.url}/docs/assets/swagger-ui-bundle.js", timeout=30)
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.headers["x-content-type-options"] == "nosniff"
    for name in ("..%2F..%2Fcore.py", "LICENSE", "core.py"):
        assert httpx.get(f"{server.url}/docs/assets/{name}", timeout=30).status_code == 404, name

"""``/docs`` and ``/redoc`` render in a real headless Chromium with no network but loopback.

FastAPI's stock pages load Swagger UI and ReDoc from a CDN, so on an offline host they
were blank. The browser here resolves no host name but 127.0.0.1 (``--host-resolver-rules``),
so the test holds on a machine with internet too, and Chrome's network log must show no
request that left the server. Like the dashboard test it skips without Chromium, except
under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.browser import chromium

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# No name resolves but loopback: a page that needs a CDN cannot get one, online or not.
NO_DNS = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


@pytest.fixture
def browser():
    with chromium("docs", NO_DNS, log_network=True, page_load_timeout=30) as driver:
        yield driver


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

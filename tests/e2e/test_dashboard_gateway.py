"""The gateway in the web pages, in a real headless Chromium: the dashboard's gateway section
(spend by backend, the counterfactuals, the saving, the per-model flags) exactly as
``/v1/cost/summary``'s ``gateway`` says (the page computes none of them), and the gallery's
"served by". A gateway in-thread on loopback with a fake local backend and another pixelmill
as its Replicate-kind upstream."""

from __future__ import annotations

import httpx
import pytest

from pixelmill.cost.gateway import BELOW, MOVE_HOME
from tests.integration.test_gateway_cost import COST
from tests.integration.test_gateway_routing import backends_toml, gateway, submit, upstream, wait
from tests.support.browser import chromium

READ = """
  const section = document.getElementById('gateway');
  const value = (td) => td.dataset.value === undefined ? null : Number(td.dataset.value);
  const spend = {}, lines = {}, models = {};
  for (const tr of document.querySelectorAll('#gw-spend tbody tr')) {
    if (tr.dataset.backend) spend[tr.dataset.backend] = value(tr.cells[1]);
    else lines[tr.dataset.key] = {value: value(tr.cells[1]), text: tr.cells[1].textContent};
  }
  for (const tr of document.querySelectorAll('#gw-models tbody tr')) {
    models[tr.dataset.model] = {route: tr.cells[1].textContent, upstream: value(tr.cells[3]),
      trailing: value(tr.cells[4]), nstar: value(tr.cells[7]), flag: tr.cells[8].textContent};
  }
  return {hidden: section.hidden, shown: section.offsetHeight > 0, spend, lines, models};
"""


def test_dashboard_shows_the_gateway_numbers(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium("dashboard gateway", "--hide-scrollbars") as browser, upstream(tmp_path) as up:
        toml = backends_toml(tmp_path, up, kind="replicate")
        with gateway(tmp_path, toml, **COST) as gw:
            jobs = [submit(gw.url, "cloud-model", seed=i) for i in range(3)] + [submit(gw.url, None, seed=i)
                                                                                  for i in range(2)]
            for job in jobs:
                assert wait(gw.url, job["id"])["status"] == "succeeded"
            summary = httpx.get(f"{gw.url}/v1/cost/summary", timeout=30).json()["gateway"]
            browser.get(f"{gw.url}/dashboard")
            WebDriverWait(browser, 15).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
            page = browser.execute_script(READ)
            # The gallery says who served each job (open mode: no key to enter).
            browser.get(f"{gw.url}/ui/gallery")
            WebDriverWait(browser, 15).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
            served = browser.execute_script(
                "return Object.fromEntries([...document.querySelectorAll('#gallery-list li.card')]"
                ".map((li) => [li.dataset.jobId, li.querySelector('dd[data-route]').textContent]))")
    expected = {job["id"]: "upstream: hosted" if job["model"] == "cloud-model" else "this server" for job in jobs}
    assert served == expected
    total = summary["total"]
    assert not page["hidden"] and page["shown"]
    assert page["spend"] == total["by_backend"] and set(page["spend"]) == {"hosted", "local"}
    for key in ("shadow", "actual", "all_hosted", "all_local", "saving"):
        assert page["lines"][key]["value"] == total[key], key
    assert page["lines"]["saving"]["text"] == "$0.0598"  # 0.21 − 0.1502: under a dollar, four digits
    assert page["lines"]["all_local"]["text"] == "$0.0005"  # under a dollar: not rounded to $0.00
    rows = {row["model"]: row for row in summary["models"]}
    assert page["models"].keys() == rows.keys() == {"cloud-model", "fake"}
    cloud = page["models"]["cloud-model"]
    assert cloud["flag"] == MOVE_HOME and cloud["route"] == "upstream → hosted"
    assert cloud["upstream"] == 3 and cloud["trailing"] == 3
    assert cloud["nstar"] == pytest.approx(rows["cloud-model"]["n_star"], rel=1e-12)
    assert page["models"]["fake"]["flag"] == BELOW and page["models"]["fake"]["route"] == "local"

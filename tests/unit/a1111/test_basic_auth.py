"""HTTP Basic with a pixelmill key as the password (A1111's ``--api-auth`` habit), through the
one credential parser the middleware and the route dependency share."""

from __future__ import annotations

import base64

import pytest

from pixelmill.api.auth import credential_from


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(("header", "key"), [
    ("Bearer pm_abc", "pm_abc"),
    ("bearer   pm_abc  ", "pm_abc"),
    (basic("user:pm_abc"), "pm_abc"),
    (basic(":pm_abc"), "pm_abc"),
    (basic("pm_abc:"), "pm_abc"),   # a client that puts the token in the user name
    (basic("me:pass:with:colons"), "pass:with:colons"),
    ("", None),                      # Open WebUI without auth: no credentials
    (None, None),
    ("Bearer", None),
])
def test_credential_from(header, key):
    assert credential_from(header) == key


@pytest.mark.parametrize("header", ["Basic not-base64!", "Digest abc", "Basic //79"])  # //79: not UTF-8
def test_unreadable_credentials_fail_as_a_wrong_key_not_as_none(header):
    assert credential_from(header) not in (None, "")


def test_basic_and_bearer_both_authenticate_any_route(make_app):
    app = make_app()
    key = app.new_key("team-a")
    as_basic = {"Authorization": basic(f"me:{key}")}
    assert app.call("GET", "/v1/jobs", headers=as_basic).status_code == 200
    assert app.call("GET", "/sdapi/v1/options", headers=as_basic).status_code == 200
    assert app.call("GET", "/sdapi/v1/options", key=key).status_code == 200
    refused = app.call("POST", "/sdapi/v1/txt2img", json={"prompt": "x"},
                       headers={"Authorization": basic("me:wrong")})  # refused before the body is read
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert refused.json()["error"] == "Unauthorized"
    empty = app.call("GET", "/sdapi/v1/options", headers={"Authorization": ""})
    assert empty.status_code == 401 and "missing API key" in empty.json()["detail"]

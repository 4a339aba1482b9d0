"""Pure parts of the upstream clients: Retry-After, the upstream's message, scrubbing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from pixelmill.gateway.clients import ReplicateClient, _upstream_message, retry_after_s
from pixelmill.gateway.config import parse_config
from pixelmill.gateway.worker import media_type

CONFIG = """
[[backend]]
name = "hosted"
kind = "replicate"
url = "https://api.example.com/v1"
api_key_env = "TOKEN"
models = ["flux"]
price_per_image = 0.01
checked = 2026-11-30
"""


def _response(status: int, **kwargs) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://api.example.com/v1/x"), **kwargs)


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after_s(_response(429, headers={"Retry-After": "3"})) == 3.0
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_s(_response(503, headers={"Retry-After": later})) <= 31
    assert retry_after_s(_response(429)) is None
    assert retry_after_s(_response(429, headers={"Retry-After": "soon"})) is None


@pytest.mark.parametrize("body, message", [
    ({"error": {"message": "Your request was rejected by the safety system"}}, "rejected by the safety system"),
    ({"detail": "Invalid token."}, "Invalid token."),
    ({"title": "Unauthenticated"}, "Unauthenticated"),
])
def test_the_upstreams_own_message_is_kept(body, message):
    assert message in _upstream_message(_response(400, json=body))
    assert _upstream_message(_response(502, text="bad gateway")) == "bad gateway"


def test_the_credential_is_scrubbed_and_sent_to_the_backends_origin_only():
    backend = parse_config(CONFIG, "b.toml", {"TOKEN": "r8_topsecret"}).backends["hosted"]
    client = ReplicateClient(backend)
    try:
        assert client.scrub("echo: r8_topsecret") == "echo: ***"
        assert "r8_topsecret" not in client.error("upstream_auth", "you sent r8_topsecret").message
        assert client._headers("https://api.example.com/v1/files/1") == {"Authorization": "Bearer r8_topsecret"}
        assert client._headers("https://cdn.example.net/out.png") == {}
        assert client._headers("http://api.example.com/v1/x") == {}  # another scheme is another origin
    finally:
        asyncio.run(client.aclose())


def test_media_type_from_magic_bytes():
    assert media_type(b"\x89PNG\r\n") == "image/png"
    assert media_type(b"\xff\xd8\xff") == "image/jpeg"
    assert media_type(b"RIFF....WEBP") == "image/webp"

"""Webhook delivery against a real HTTP receiver on loopback: signing, retries, refusals."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import pytest

from pixelmill import __version__
from pixelmill.outbound.webhooks import (
    DeliveryResult,
    ProgressThrottle,
    WebhookSender,
    encode_body,
    load_or_create_secret,
    parse_retry_after,
    secret_from,
    sign,
    verify,
)
from tests.support.receiver import Receiver, Reply

SECRET = b"test-secret-0123456789abcdef"
JOB = {"id": "job_abc", "status": "succeeded", "progress": {"step": 2, "total": 2}, "images": [{"seed": 42}]}


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


class Sleeps(list):
    """Records the delays a sender asks for and waits only a moment."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(0.001)


def sender(**kwargs) -> tuple[WebhookSender, Sleeps]:
    sleeps = Sleeps()
    options = {"allow_private": True, "max_attempts": 4, "backoff_s": 0.01, "timeout_s": 2} | kwargs
    return WebhookSender(SECRET, sleep=sleeps, **options), sleeps


def deliver(hooks: WebhookSender, url: str, event: str = "completed", body: dict = JOB) -> DeliveryResult:
    return asyncio.run(hooks.deliver(url, event, body))


# --- signing ------------------------------------------------------------------------


def test_delivery_is_signed_and_verifies_with_the_received_headers(receiver):
    hooks, _ = sender()
    result = deliver(hooks, receiver.url + "/hook")
    assert result.ok and result.attempts == 1 and result.status_code == 200 and result.delivered_at

    (request,) = receiver.requests
    headers, body = request["headers"], request["body"]
    assert body == json.dumps(JOB, separators=(",", ":"), sort_keys=True).encode()
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"pixelmill-webhooks/{__version__}"
    assert headers["X-Pixelmill-Event"] == "completed"
    assert abs(int(headers["X-Pixelmill-Timestamp"]) - time.time()) < 5
    assert verify(SECRET, headers["X-Pixelmill-Timestamp"], headers["X-Pixelmill-Signature"], body)
    assert verify(SECRET.decode(), headers["X-Pixelmill-Timestamp"], headers["X-Pixelmill-Signature"], body)


def test_tampering_wrong_secret_and_stale_timestamps_fail_verification():
    body = encode_body(JOB)
    now = 1_700_000_000
    signature = sign(SECRET, now, body)
    assert verify(SECRET, str(now), signature, body, now=now + 299)
    assert not verify(SECRET, str(now), signature, body.replace(b"succeeded", b"failed"), now=now)
    assert not verify(b"other-secret", str(now), signature, body, now=now)
    assert not verify(SECRET, str(now + 1), signature, body, now=now)  # timestamp is signed
    assert not verify(SECRET, str(now), signature, body, now=now + 301)  # replayed later
    assert not verify(SECRET, str(now), signature, body, now=now - 301)
    for timestamp, sig in [(None, signature), (str(now), None), ("-5", signature), ("1e9", signature)]:
        assert not verify(SECRET, timestamp, sig, body, now=now)


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    import hashlib
    import hmac

    expected = hmac.new(SECRET, b"1700000000." + b'{"a":1}', hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_700_000_000, b'{"a":1}') == "sha256=" + expected


# --- retries ----------------------------------------------------------------------------


def test_5xx_is_retried_with_exponential_backoff_then_succeeds(receiver):
    receiver.script = [Reply(500), Reply(503), Reply(502)]
    hooks, sleeps = sender(max_attempts=5, backoff_s=0.01)
    result = deliver(hooks, receiver.url)
    assert result.ok and result.attempts == 4 and result.status_code == 200
    assert len(receiver.requests) == 4
    for attempt, delay in enumerate(sleeps):
        assert 0.01 * 2**attempt * 0.8 <= delay <= 0.01 * 2**attempt * 1.2
    deliveries = {r["headers"]["X-Pixelmill-Delivery"] for r in receiver.requests}
    assert len(deliveries) == 1  # one id across retries, so receivers can deduplicate


def test_backoff_is_capped():
    hooks, _ = sender(backoff_s=1.0, max_backoff_s=5.0)
    assert all(hooks._backoff(attempt) <= 6.0 for attempt in range(1, 20))


def test_429_honours_retry_after_capped(receiver):
    receiver.script = [Reply(429, {"Retry-After": "2"}), Reply(429, {"Retry-After": "86400"})]
    hooks, sleeps = sender(max_retry_after_s=30)
    result = deliver(hooks, receiver.url)
    assert result.ok and result.attempts == 3
    assert sleeps == [2.0, 30.0]


def test_retry_after_http_date():
    from datetime import datetime, timezone

    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:10 GMT", now=now) == 10
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0
    assert parse_retry_after("soon", now=now) is None and parse_retry_after(None) is None


def test_permanent_4xx_is_not_retried(receiver):
    receiver.script = [Reply(400), Reply(200)]
    hooks, sleeps = sender()
    result = deliver(hooks, receiver.url)
    assert not result.ok and result.attempts == 1 and result.status_code == 400
    assert len(receiver.requests) == 1 and sleeps == []


def test_gives_up_after_max_attempts(receiver):
    receiver.script = [Reply(500)] * 10
    hooks, sleeps = sender(max_attempts=3)
    result = deliver(hooks, receiver.url)
    assert not result.ok and result.attempts == 3 and result.status_code == 500
    assert "gave up after 3 attempts" in result.error
    assert len(receiver.requests) == 3 and len(sleeps) == 2


def test_timeouts_are_retried(receiver):
    receiver.script = [Reply(200, delay_s=1.0)]
    hooks, _ = sender(timeout_s=0.2)
    result = deliver(hooks, receiver.url)
    assert result.ok and result.attempts == 2


def test_connection_errors_are_retried():
    import socket

    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hooks, sleeps = sender(max_attempts=3)
    result = deliver(hooks, f"http://127.0.0.1:{port}/hook")
    assert not result.ok and result.attempts == 3 and result.status_code is None
    assert "ConnectError" in result.error and len(sleeps) == 2


# --- refusals ---------------------------------------------------------------------------


def test_loopback_refused_unless_private_allowed(receiver):
    hooks, _ = sender(allow_private=False)
    result = deliver(hooks, receiver.url + "/hook")
    assert not result.ok and result.attempts == 0 and "loopback" in result.error
    assert receiver.requests == []

    hooks, _ = sender(allow_private=True)
    assert deliver(hooks, receiver.url + "/hook").ok
    assert len(receiver.requests) == 1


def test_redirects_are_not_followed(receiver):
    receiver.script = [Reply(302, {"Location": receiver.url + "/internal-admin"})]
    hooks, sleeps = sender()
    result = deliver(hooks, receiver.url + "/hook")
    assert not result.ok and result.status_code == 302 and result.attempts == 1
    assert "redirect" in result.error
    assert [r["path"] for r in receiver.requests] == ["/hook"] and sleeps == []


def test_address_refused_at_connect_time_is_permanent(receiver, monkeypatch):
    """If the name passed the check but resolves privately when connecting (DNS rebinding)."""
    import pixelmill.outbound.webhooks as webhooks

    monkeypatch.setattr(webhooks, "check_url", lambda *args, **kwargs: None)
    hooks, sleeps = sender(allow_private=False)
    result = deliver(hooks, receiver.url + "/hook")
    assert not result.ok and result.attempts == 1 and "refused to connect" in result.error
    assert receiver.requests == [] and sleeps == []


def test_real_sleep_between_attempts(receiver):
    receiver.script = [Reply(503)]
    hooks = WebhookSender(SECRET, allow_private=True, backoff_s=0.01)
    started = time.monotonic()
    result = deliver(hooks, receiver.url)
    assert result.ok and result.attempts == 2 and time.monotonic() - started >= 0.008


def test_unknown_event_is_a_programming_error(receiver):
    hooks, _ = sender()
    with pytest.raises(ValueError):
        deliver(hooks, receiver.url, event="finished")


def test_result_serialises_for_the_job_record(receiver):
    hooks, _ = sender()
    state = {"completed": deliver(hooks, receiver.url).to_dict()}
    assert json.loads(json.dumps(state))["completed"]["ok"] is True
    assert isinstance(state["completed"]["delivered_at"], str)


# --- progress throttling ----------------------------------------------------------------


def test_progress_throttle_one_per_interval_per_job_and_always_the_last():
    clock = [100.0]
    throttle = ProgressThrottle(min_interval_s=1.0, clock=lambda: clock[0])
    sent = []
    for step in range(1, 31):  # 30 steps, 0.1 s apart
        if throttle.should_send("job_a", step, 30):
            sent.append(step)
        clock[0] += 0.1
    assert sent[0] == 1 and sent[-1] == 30
    assert 3 <= len(sent) <= 5  # ~3 s of progress → about one per second, plus the last
    assert throttle.should_send("job_b", 1, 30)  # jobs are throttled independently
    throttle.forget("job_a")
    assert throttle.should_send("job_a", 2, 30)


# --- the secret -------------------------------------------------------------------------


def test_secret_is_created_once_with_mode_0600_and_reused(tmp_path):
    path = tmp_path / "state" / "webhook-secret"
    first = load_or_create_secret(path)
    assert len(first) == 64 and int(first, 16) >= 0  # 32 random bytes, hex text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert load_or_create_secret(tmp_path / "other") != first


def test_explicit_secret_setting_wins(tmp_path):
    path = tmp_path / "webhook-secret"
    assert secret_from("my-configured-secret", path) == b"my-configured-secret"
    assert not path.exists()
    assert secret_from("  ", path) == load_or_create_secret(path)

"""Standard Webhooks delivery (the Replicate dialect's): retried with one id, valid each time."""

from __future__ import annotations

import asyncio

import pytest
from replicate.webhook import WebhookSigningSecret, Webhooks

from pixelmill.outbound.webhooks import WebhookSender, standard_secret
from tests.support.receiver import Receiver, Reply

SECRET = b"test-secret-0123456789abcdef"
BODY = {"id": "job_abc", "status": "succeeded", "output": ["http://h/v1/files/x"]}


class NoWait:
    async def __call__(self, seconds: float) -> None:
        await asyncio.sleep(0.001)


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def test_retries_keep_the_webhook_id_and_each_attempt_validates(receiver):
    receiver.script = [Reply(status=503), Reply(status=200)]
    hooks = WebhookSender(SECRET, allow_private=True, backoff_s=0.01, timeout_s=2, sleep=NoWait())
    result = asyncio.run(hooks.deliver(receiver.url + "/hook", "completed", BODY, signing="standard"))
    assert result.ok and result.attempts == 2
    first, second = receiver.requests
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["headers"]["webhook-id"].startswith("msg_")
    assert not any(name.lower().startswith("x-pixelmill") for name in second["headers"])
    secret = WebhookSigningSecret(key=standard_secret(SECRET))
    for request in (first, second):
        Webhooks.validate(headers=request["headers"], body=request["body"].decode(), secret=secret, tolerance=60)


def test_an_unknown_signing_is_a_programming_error(receiver):
    hooks = WebhookSender(SECRET, allow_private=True)
    with pytest.raises(ValueError):
        asyncio.run(hooks.deliver(receiver.url, "completed", BODY, signing="hmac"))
    assert receiver.requests == []

"""Signed, retried webhook delivery of job events.

Events: ``started``, ``progress`` and ``completed`` (the body's ``status`` says whether
the job succeeded, failed or was canceled). The body is the job exactly as
``GET /v1/jobs/{id}`` returns it.

Each delivery is one ``POST`` with these headers::

    Content-Type: application/json
    User-Agent: pixelmill-webhooks/<version>
    X-Pixelmill-Event: completed
    X-Pixelmill-Delivery: <random id, the same on every retry of one delivery>
    X-Pixelmill-Timestamp: 1718000000
    X-Pixelmill-Signature: sha256=<hex>

Verifying a delivery (receivers; :func:`verify` does exactly this):

1. ``body`` is the raw request body bytes, *before* any JSON parsing (the server sends
   ``json.dumps(job, separators=(",", ":"), sort_keys=True)`` encoded as UTF-8).
2. ``expected = HMAC_SHA256(key=secret, msg=timestamp.encode() + b"." + body)``, hex
   encoded, where ``timestamp`` is the ``X-Pixelmill-Timestamp`` header text and
   ``secret`` the server's webhook secret as UTF-8 bytes.
3. Accept only if ``X-Pixelmill-Signature == "sha256=" + expected`` (compare in
   constant time) **and** the timestamp is within 5 minutes of the receiver's clock.
   The timestamp is signed, so an old delivery cannot be replayed with a fresh one.

**Standard Webhooks** (``signing="standard"``, the Replicate dialect's predictions): the
same delivery with the headers Replicate sends instead of the ``X-Pixelmill-*`` ones::

    webhook-id: msg_<random id, the same on every retry of one delivery>
    webhook-timestamp: 1718000000
    webhook-signature: v1,<base64 HMAC_SHA256(key, "<webhook-id>.<timestamp>.<body>")>

where ``key`` is the server secret's bytes; receivers hold it as
``"whsec_" + base64(key)`` (:func:`standard_secret`, served by the Replicate dialect's
``GET /v1/webhooks/default/secret``), which ``replicate.webhooks.validate`` accepts.

Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff
(``backoff_s`` × 1, 2, 4, … capped at ``max_backoff_s``, ±20 % jitter), or after
``Retry-After`` when the receiver sends one (capped at ``max_retry_after_s``). Any other
status, including 3xx (redirects are never followed, see :mod:`pixelmill.outbound.netguard`), is
a permanent failure. A retried delivery has a new timestamp and signature but the same
``X-Pixelmill-Delivery`` id, so receivers can drop duplicates. Deliveries can arrive out
of order; the body's ``status`` and progress fields are authoritative.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
from pydantic import BaseModel

from pixelmill import __version__
from pixelmill.core.errors import InvalidRequest
from pixelmill.outbound.netguard import check_url, guarded_async_client

EVENTS = ("started", "progress", "completed")
SIGNINGS = ("pixelmill", "standard")
SIGNATURE_PREFIX = "sha256="
STANDARD_SECRET_PREFIX = "whsec_"
USER_AGENT = f"pixelmill-webhooks/{__version__}"


# --- signing ----------------------------------------------------------------------


def _key(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: bytes | str, timestamp: int, body: bytes) -> str:
    """The ``X-Pixelmill-Signature`` value: ``sha256=`` + hex HMAC of ``b"<timestamp>." + body``."""
    digest = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify(
    secret: bytes | str,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """Whether a received webhook is authentic and fresh (what a receiver should call).

    False when a header is missing or malformed, the timestamp is more than
    ``tolerance_s`` away from ``now`` (default: the current time), or the signature
    does not match ``body``. The comparison is constant-time.
    """
    if not timestamp_header or not signature_header:
        return False
    timestamp_text = timestamp_header.strip()
    if not timestamp_text.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp_text)) > tolerance_s:
        return False
    expected = sign(secret, int(timestamp_text), body)
    return hmac.compare_digest(expected.encode(), signature_header.strip().encode())


def standard_secret(secret: bytes | str) -> str:
    """The server secret as Standard Webhooks receivers hold it: ``whsec_`` + base64 of the key."""
    return STANDARD_SECRET_PREFIX + base64.b64encode(_key(secret)).decode("ascii")


def sign_standard(secret: bytes | str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode("ascii")


def encode_body(body: dict) -> bytes:
    """The exact bytes sent (and signed): compact, key-sorted JSON."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


# --- the server secret ------------------------------------------------------------


def load_or_create_secret(path: Path) -> bytes:
    """The webhook secret kept in ``path``, created on first use.

    The file holds 64 hex characters (32 random bytes) as text so an operator can copy
    it to receivers; the HMAC key is that text's UTF-8 bytes. It is created with mode
    0600 and reused across restarts.
    """
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: if two processes start at once, exactly one writes and both read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"webhook secret file {path} is empty; delete it to generate a new secret")
    return text.encode("utf-8")


def secret_from(setting: str | None, path: Path) -> bytes:
    """The configured secret (``setting``, if not blank) or the one kept in ``path``."""
    if setting and setting.strip():
        return setting.strip().encode("utf-8")
    return load_or_create_secret(path)


# --- delivery ---------------------------------------------------------------------


class DeliveryResult(BaseModel):
    """Outcome of one delivery (all its attempts); store ``to_dict()`` on the job."""

    event: str
    ok: bool
    attempts: int
    status_code: int | None = None
    error: str | None = None
    delivered_at: datetime | None = None
    """When the receiver acknowledged with 2xx; None if it never did."""

    def to_dict(self) -> dict:
        """JSON-safe form (datetimes as ISO strings) for ``JobRecord.webhook_state[event]``."""
        return self.model_dump(mode="json")


def _failed(event: str, attempts: int, error: str, status_code: int | None) -> DeliveryResult:
    return DeliveryResult(event=event, ok=False, attempts=attempts, status_code=status_code, error=error)


class _Retry(Exception):
    """An attempt failed in a way worth retrying; ``delay`` overrides the backoff."""

    def __init__(self, error: str, status_code: int | None = None, delay: float | None = None):
        super().__init__(error)
        self.error = error
        self.status_code = status_code
        self.delay = delay


class _Permanent(Exception):
    """An attempt failed in a way retrying cannot fix."""

    def __init__(self, error: str, status_code: int | None = None):
        super().__init__(error)
        self.error = error
        self.status_code = status_code


class WebhookSender:
    """Delivers signed job events to the URLs jobs name; see the module docstring.

    ``secret`` signs every delivery; ``allow_private`` lets receivers on loopback or
    private networks through (see :mod:`pixelmill.outbound.netguard`); ``timeout_s`` bounds each
    phase of an attempt (and twice that the whole attempt). One sender serves any
    number of jobs; each :meth:`deliver` uses its own short-lived HTTP client, so it
    may be called from any event loop. For ``progress`` events, which go stale fast, a
    second sender with ``max_attempts=1`` is a sensible choice.
    """

    def __init__(
        self,
        secret: bytes | str,
        allow_private: bool,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 10,
        *,
        max_backoff_s: float = 60.0,
        max_retry_after_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        events: tuple[str, ...] = EVENTS,
        param: str = "webhook.url",
    ):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.secret = _key(secret)
        self.allow_private = allow_private
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self._sleep = sleep if sleep is not None else anyio.sleep  # injectable so tests can record delays
        self.events = events  # job events by default; the cost alerts send their own
        self.param = param  # the setting or field a refused URL is reported under

    async def deliver(self, url: str, event: str, body: dict, *, signing: str = "pixelmill") -> DeliveryResult:
        """POST ``body`` as ``event`` to ``url``, retrying as documented; never raises for I/O.

        ``signing``: ``pixelmill`` (``X-Pixelmill-*`` headers) or ``standard`` (Standard Webhooks).
        """
        if event not in self.events:
            raise ValueError(f"unknown webhook event {event!r}; expected one of {self.events}")
        if signing not in SIGNINGS:
            raise ValueError(f"unknown webhook signing {signing!r}; expected one of {SIGNINGS}")
        try:
            await anyio.to_thread.run_sync(self._check, url)
        except InvalidRequest as exc:
            return _failed(event, 0, exc.message, None)  # refused: no request was sent
        payload = encode_body(body)
        delivery_id = ("msg_" if signing == "standard" else "") + uuid.uuid4().hex
        async with guarded_async_client(
            allow_private=self.allow_private, timeout_s=self.timeout_s, param=self.param
        ) as client:
            return await self._attempts(client, url, event, payload, delivery_id, signing)

    def _check(self, url: str) -> None:
        check_url(url, allow_private=self.allow_private, param=self.param)

    async def _attempts(
        self, client: httpx.AsyncClient, url: str, event: str, payload: bytes, delivery_id: str,
        signing: str = "pixelmill",
    ) -> DeliveryResult:
        attempt = 0
        while True:
            attempt += 1
            try:
                status = await self._attempt(client, url, event, payload, delivery_id, signing)
            except _Permanent as exc:
                return _failed(event, attempt, exc.error, exc.status_code)
            except _Retry as exc:
                if attempt >= self.max_attempts:
                    error = f"gave up after {attempt} attempts: {exc.error}"
                    return _failed(event, attempt, error, exc.status_code)
                await self._sleep(exc.delay if exc.delay is not None else self._backoff(attempt))
            else:
                return DeliveryResult(
                    event=event, ok=True, attempts=attempt, status_code=status,
                    delivered_at=datetime.now(timezone.utc),
                )

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, event: str, payload: bytes, delivery_id: str,
        signing: str = "pixelmill",
    ) -> int:
        """One POST; returns the 2xx status or raises :class:`_Retry` / :class:`_Permanent`."""
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if signing == "standard":
            headers |= {
                "webhook-id": delivery_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign_standard(self.secret, delivery_id, timestamp, payload),
            }
        else:
            headers |= {
                "X-Pixelmill-Event": event,
                "X-Pixelmill-Delivery": delivery_id,
                "X-Pixelmill-Timestamp": str(timestamp),
                "X-Pixelmill-Signature": sign(self.secret, timestamp, payload),
            }
        try:
            # An overall deadline: read timeouts alone let a receiver trickle bytes forever.
            with anyio.fail_after(self.timeout_s * 2):
                # stream(): only the status and headers matter; a huge reply body is never read.
                async with client.stream("POST", url, content=payload, headers=headers) as response:
                    return self._judge(response)
        except InvalidRequest as exc:  # the guard refused the address at connect time
            raise _Permanent(exc.message) from exc
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise _Retry(f"timed out: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc

    def _judge(self, response: httpx.Response) -> int:
        code = response.status_code
        if 200 <= code < 300:
            return code
        if code == 429 or code >= 500:
            raise _Retry(f"receiver answered {code}", code, self._retry_after(response))
        if 300 <= code < 400:
            raise _Permanent(f"receiver answered {code}; redirects are not followed", code)
        raise _Permanent(f"receiver answered {code}", code)

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        # Jitter spreads retries so many failed deliveries do not hit a receiver in lockstep.
        return base * random.uniform(0.8, 1.2)

    def _retry_after(self, response: httpx.Response) -> float | None:
        delay = parse_retry_after(response.headers.get("Retry-After"))
        return None if delay is None else min(delay, self.max_retry_after_s)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


# --- progress throttling ------------------------------------------------------------


class ProgressThrottle:
    """Lets at most one ``progress`` webhook per ``min_interval_s`` per job through.

    The final step (``step >= total``) always passes, so receivers see 100 %. Call
    :meth:`forget` when a job ends to release its entry.
    """

    def __init__(self, min_interval_s: float = 1.0, *, clock: Callable[[], float] = time.monotonic):
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_sent: dict[str, float] = {}
        self._lock = threading.Lock()  # workers may report progress from several threads

    def should_send(self, job_id: str, step: int, total: int) -> bool:
        """Whether to send a progress webhook for ``job_id`` at ``step`` of ``total`` now."""
        now = self._clock()
        with self._lock:
            last = self._last_sent.get(job_id)
            final = total > 0 and step >= total
            if not final and last is not None and now - last < self.min_interval_s:
                return False
            self._last_sent[job_id] = now
            return True

    def forget(self, job_id: str) -> None:
        """Drop what is remembered about ``job_id`` (call when the job is terminal)."""
        with self._lock:
            self._last_sent.pop(job_id, None)

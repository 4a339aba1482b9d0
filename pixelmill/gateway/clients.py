"""HTTP clients of the upstream kinds: a Replicate-compatible API and an OpenAI Images API.

Both talk only to their backend's configured ``url`` through the outbound guard
(:func:`pixelmill.outbound.netguard.guarded_async_client`; the backend's ``allow_private``
is the explicit opt-in for loopback/private addresses). Output files an upstream names
by URL go through the same guard; the credential is sent to the backend's own origin
only, never to another host (Replicate serves outputs from a CDN).

Retries (``max_retries``, backoff doubling from :data:`BACKOFF_S`, or the upstream's
``Retry-After`` when it sends one, capped at :data:`MAX_RETRY_AFTER_S`):

* reads (polls, downloads, cancels): on 429, any 5xx and transport errors;
* creations (POST of a prediction or an image request): on 429 and 503 (the upstream
  refused before accepting anything) and on failures to connect; never on other 5xx or
  a connection dropped mid-request, because the upstream may have accepted (and billed)
  the request: the job then fails instead of paying twice.

Every refusal becomes :class:`UpstreamError` with the upstream's own message; the
credential is scrubbed from every message.

Image inputs (:data:`MODES`): a Replicate-kind prediction takes ``image`` and ``mask`` as
``data:`` URIs (white = repaint, as cog-sdxl and pixelmill's own Replicate dialect) with
``prompt_strength``; an OpenAI-kind upstream takes an inpaint as ``images/edits``
multipart (``image`` and an RGBA ``mask`` whose transparent pixels are edited). The Images
API has no image-to-image with a strength, so img2img does not go to an OpenAI kind.
LoRAs and ControlNets go to neither (:mod:`pixelmill.gateway.dispatch` decides).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx
from PIL import Image

from pixelmill.core.types import GenerationRequest, Mode
from pixelmill.gateway.config import Backend
from pixelmill.outbound.netguard import guarded_async_client

log = logging.getLogger(__name__)

BACKOFF_S = 0.5
MAX_RETRY_AFTER_S = 60.0
_PROGRESS = re.compile(r"(\d+)/(\d+)\s*$")
_CODES = {401: "upstream_auth", 403: "upstream_auth", 404: "upstream_not_found", 429: "upstream_rate_limited"}
MODES = {"replicate": frozenset(Mode), "openai": frozenset({Mode.txt2img, Mode.inpaint})}
"""The generation modes each upstream kind can be sent (see the module docstring)."""


def data_uri(png: bytes) -> str:
    """A PNG as a base64 ``data:`` URI (how a Replicate prediction takes a file inline)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def alpha_mask(binary_png: bytes) -> bytes:
    """A stored mask (mode L, white = repaint) as OpenAI's: RGBA, transparent = edit."""
    with Image.open(io.BytesIO(binary_png)) as mask:
        alpha = mask.convert("L").point(lambda v: 0 if v >= 128 else 255)
    rgba = Image.new("RGBA", alpha.size, (0, 0, 0, 255))
    rgba.putalpha(alpha)
    out = io.BytesIO()
    rgba.save(out, format="PNG")
    return out.getvalue()


def _inputs_of(request: GenerationRequest) -> tuple[bytes, bytes | None]:
    """The input image and mask of an image request (a claimed job carries them)."""
    if not request.init_image or (request.mode is Mode.inpaint and not request.mask_image):
        raise UpstreamError("gateway_error", "the job's input image is missing (not loaded with the claim)")
    return request.init_image, request.mask_image if request.mode is Mode.inpaint else None


class UpstreamError(Exception):
    """The upstream refused or failed; ``code`` for the job error, ``message`` names the
    backend and carries the upstream's own words."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Poll:
    """One look at an asynchronous upstream job."""

    status: str  # running | succeeded | failed | canceled
    progress: tuple[int, int] | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


def retry_after_s(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def _upstream_message(response: httpx.Response) -> str:
    """The upstream's explanation, from any of the usual error shapes, else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500].strip() or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("detail", "error", "message", "title"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key]
    return str(body)[:500]


class UpstreamClient:
    """The common part: retries, refusals, downloads. One per backend, shared by its jobs."""

    def __init__(self, backend: Backend, http: httpx.AsyncClient | None = None):
        self.backend = backend
        self.http = http or guarded_async_client(
            allow_private=backend.allow_private, timeout_s=backend.timeout_s, param=f"backend {backend.name}")
        self._origin = urlsplit(backend.url)[:2]

    async def aclose(self) -> None:
        await self.http.aclose()

    def scrub(self, text: str) -> str:
        """``text`` without the credential (an upstream may echo what it was sent)."""
        key = self.backend.api_key
        return text.replace(key, "***") if key else text

    def error(self, code: str, what: str) -> UpstreamError:
        return UpstreamError(code, self.scrub(f"upstream {self.backend.name!r}: {what}"))

    def _headers(self, url: str) -> dict[str, str]:
        if self.backend.api_key and urlsplit(url)[:2] == self._origin:
            return {"Authorization": f"Bearer {self.backend.api_key}"}
        return {}

    async def send(self, method: str, url: str, *, create: bool = False, **kwargs) -> httpx.Response:
        """One request with the retries of the module docstring; a refusal raises UpstreamError."""
        headers = {**kwargs.pop("headers", {}), **self._headers(url)}
        attempt = 0
        while True:
            try:
                response = await self.http.request(method, url, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                retryable = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) or not create
                if not retryable or attempt >= self.backend.max_retries:
                    raise self.error("upstream_unreachable", f"{type(exc).__name__} calling {method} {url}: {exc}"
                                     + (" (not retried: the request may have been accepted)" if create else ""))
                wait = BACKOFF_S * 2 ** attempt
            else:
                status = response.status_code
                retryable = status in (429, 503) or (status >= 500 and not create)
                if status < 400:
                    return response
                if not retryable or attempt >= self.backend.max_retries:
                    code = _CODES.get(status, "upstream_error" if status >= 500 else "upstream_refused")
                    raise self.error(code, f"HTTP {status}: {_upstream_message(response)}")
                wait = retry_after_s(response)
                wait = BACKOFF_S * 2 ** attempt if wait is None else min(wait, MAX_RETRY_AFTER_S)
                log.warning("backend %s: HTTP %d on %s %s; retrying in %.1f s", self.backend.name, status,
                            method, url, wait)
            attempt += 1
            await asyncio.sleep(wait)

    async def download(self, location: str) -> bytes:
        """The bytes of an output: a ``data:`` URI or a URL (fetched through the guard)."""
        if location.startswith("data:"):
            try:
                return base64.b64decode(location.split(",", 1)[1], validate=True)
            except (IndexError, ValueError):
                raise self.error("upstream_error", "an output data URI is not valid base64") from None
        if not location.startswith(("http://", "https://")):
            raise self.error("upstream_error", f"an output is neither a URL nor a data URI: {location[:80]!r}")
        return (await self.send("GET", location)).content

    def upstream_model(self, request: GenerationRequest) -> str:
        return self.backend.models[request.model or ""]


class ReplicateClient(UpstreamClient):
    """Predictions: create (async), poll, cancel. ``models`` values are ``owner/name``,
    ``owner/name:version`` or a bare version id."""

    def _create_target(self, model: str) -> tuple[str, dict]:
        base = self.backend.url
        if ":" in model:
            return f"{base}/predictions", {"version": model.split(":", 1)[1]}
        if "/" in model:
            return f"{base}/models/{model}/predictions", {}
        return f"{base}/predictions", {"version": model}

    @staticmethod
    def inputs(request: GenerationRequest) -> dict:
        """The prediction's ``input``: cog-sdxl's field names; images as data: URIs."""
        values = {
            "prompt": request.prompt, "negative_prompt": request.negative_prompt or None,
            "width": request.width, "height": request.height, "num_outputs": request.n,
            "num_inference_steps": request.steps, "guidance_scale": request.guidance, "seed": request.seed,
        }
        if request.mode is not Mode.txt2img:  # the size then comes from the image, upstream as here
            image, mask = _inputs_of(request)
            values |= {"image": data_uri(image), "mask": data_uri(mask) if mask else None,
                       "prompt_strength": request.strength}
        return {key: value for key, value in values.items() if value is not None}

    async def create(self, request: GenerationRequest) -> str:
        """Create the prediction without waiting for it; returns its id."""
        url, body = self._create_target(self.upstream_model(request))
        inputs = await asyncio.to_thread(self.inputs, request)  # base64 of the images: off the loop
        response = await self.send("POST", url, create=True, json={**body, "input": inputs},
                                   headers={"Prefer": "respond-async"})
        prediction_id = response.json().get("id") if response.headers.get("content-type", "").startswith(
            "application/json") else None
        if not isinstance(prediction_id, str) or not prediction_id:
            raise self.error("upstream_error", "the create response has no prediction id")
        return prediction_id

    def _own(self, prediction_id: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,255}", prediction_id):
            raise self.error("upstream_error", "the prediction id has unexpected characters")
        return f"{self.backend.url}/predictions/{prediction_id}"

    async def poll(self, prediction_id: str) -> Poll:
        body = (await self.send("GET", self._own(prediction_id))).json()
        status = body.get("status")
        progress = None
        for line in reversed((body.get("logs") or "").splitlines()):
            match = _PROGRESS.search(line)
            if match and "|" in line:
                progress = (int(match[1]), int(match[2]))
                break
        if status in ("starting", "processing"):
            return Poll("running", progress)
        if status == "succeeded":
            output = body.get("output")
            outputs = output if isinstance(output, list) else [output] if isinstance(output, str) else []
            return Poll("succeeded", progress, [o for o in outputs if isinstance(o, str)])
        if status in ("failed", "canceled", "aborted"):
            return Poll("canceled" if status == "canceled" else "failed", progress,
                        error=self.scrub(str(body.get("error") or f"the prediction {status}")))
        raise self.error("upstream_error", f"unknown prediction status {status!r}")

    async def cancel(self, prediction_id: str) -> None:
        await self.send("POST", f"{self._own(prediction_id)}/cancel")


class OpenAIClient(UpstreamClient):
    """The Images API: one synchronous POST that answers with the images (``images/generations``,
    or ``images/edits`` multipart for an inpaint)."""

    async def generate(self, request: GenerationRequest) -> list[bytes]:
        model = self.upstream_model(request)
        body = {"model": model, "prompt": request.prompt, "n": request.n}
        if not model.startswith("gpt-image"):  # GPT image models always answer b64_json and refuse the field
            body["response_format"] = "b64_json"
        if request.width and request.height:
            body["size"] = f"{request.width}x{request.height}"
        if request.mode is Mode.txt2img:
            response = await self.send("POST", f"{self.backend.url}/images/generations", create=True,
                                       json=body, timeout=self.backend.max_wait_s)
        elif request.mode is Mode.inpaint:
            image, mask = _inputs_of(request)
            files = {"image": ("image.png", image, "image/png"),
                     "mask": ("mask.png", await asyncio.to_thread(alpha_mask, mask), "image/png")}
            response = await self.send("POST", f"{self.backend.url}/images/edits", create=True,
                                       data={key: str(value) for key, value in body.items()}, files=files,
                                       timeout=self.backend.max_wait_s)
        else:  # the dispatcher never routes it here (MODES); a stale row could
            raise self.error("upstream_refused", f"the Images API has no {request.mode.value}")
        data = response.json().get("data")
        if not isinstance(data, list) or not data:
            raise self.error("upstream_error", "the response has no images")
        images = []
        for item in data:
            if isinstance(item, dict) and item.get("b64_json"):
                images.append(base64.b64decode(item["b64_json"]))
            elif isinstance(item, dict) and item.get("url"):
                images.append(await self.download(item["url"]))
            else:
                raise self.error("upstream_error", "an image has neither b64_json nor url")
        return images


def client_for(backend: Backend, http: httpx.AsyncClient | None = None) -> UpstreamClient:
    """The client of ``backend``'s kind."""
    return (ReplicateClient if backend.kind == "replicate" else OpenAIClient)(backend, http)

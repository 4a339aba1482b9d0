"""File inputs of a prediction (``image``, ``mask``): where their bytes come from.

The official client uploads a local file first (``POST /v1/files``) and sends the URL it
got back, or sends a ``data:`` URI (``file_encoding_strategy="base64"``); hosted code also
passes http(s) URLs of images anywhere. So an input is one of:

* this server's own file URL (an upload, ``…/replicate/v1/files/{id}``, or a result,
  ``…/v1/files/{id}``): read from the result store, never fetched over the network;
* a ``data:`` URI with base64 content;
* any other http(s) URL: fetched through the outbound URL guard
  (:mod:`pixelmill.outbound.netguard`: no redirects, public addresses only unless
  ``--webhook-allow-private``), at most ``--max-multipart-bytes`` long.

Every error names the input field. Decoding applies the upload limits, in the CPU pool.
"""

from __future__ import annotations

import base64
import binascii
import re

import httpx

from pixelmill.api.offload import run_cpu
from pixelmill.core.errors import InvalidRequest, NotFound, PayloadTooLarge
from pixelmill.images.codecs import decode_upload
from pixelmill.jobs.predictions import PREFIX
from pixelmill.jobs.results import FILE_ID
from pixelmill.outbound.netguard import guarded_async_client
from pixelmill.services import Services

FETCH_TIMEOUT_S = 10.0
_DATA_URI = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.ASCII)


def local_file_id(url: str, base_url: str) -> str | None:
    """The file id when ``url`` is one of this server's file URLs (upload or result), else None."""
    base = base_url.rstrip("/")
    for prefix in (f"{base}{PREFIX}/v1/files/", f"{base}/v1/files/"):
        if url.startswith(prefix):
            file_id = url[len(prefix):].removesuffix("/download")
            return file_id if FILE_ID.fullmatch(file_id) else ""
    return None


def decode_data_uri(uri: str, *, field: str, max_bytes: int) -> bytes:
    """The bytes of a base64 ``data:`` URI (the form the client's base64 strategy sends)."""
    match = _DATA_URI.match(uri)
    if match is None or not match["b64"]:
        raise InvalidRequest(f"{field} must be a base64 data: URI (data:image/png;base64,...)", param=field)
    payload = uri[match.end():]
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"{field} is over the limit of {max_bytes:,} bytes", param=field)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{field} is not valid base64", param=field) from None


async def fetch(url: str, *, field: str, allow_private: bool, max_bytes: int) -> bytes:
    """GET ``url`` through the URL guard; the body, or :class:`InvalidRequest` naming ``field``."""
    guarded = guarded_async_client(allow_private=allow_private, timeout_s=FETCH_TIMEOUT_S, param=field)
    try:
        async with guarded as client, client.stream("GET", url) as response:
            if response.status_code != 200:
                message = f"{field}: fetching {url} answered HTTP {response.status_code}"
                raise InvalidRequest(message, param=field)
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise PayloadTooLarge(f"{field} is over the limit of {max_bytes:,} bytes", param=field)
            return bytes(data)
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"{field}: could not fetch {url}: {type(exc).__name__}", param=field) from None


async def input_bytes(value: str, *, field: str, services: Services, base_url: str) -> bytes:
    """The bytes an input names (see the module docstring)."""
    settings = services.settings
    if value.startswith("data:"):
        return decode_data_uri(value, field=field, max_bytes=settings.max_multipart_bytes)
    if not value.startswith(("http://", "https://")):
        raise InvalidRequest(f"{field} must be a URL (http, https or data:), got {value[:40]!r}", param=field)
    file_id = local_file_id(value, base_url)
    if file_id is not None:
        try:
            if not file_id:
                raise NotFound("no such file")
            return await services.read_result(file_id)
        except NotFound:
            message = f"{field}: file {value} does not exist or has expired"
            raise InvalidRequest(message, param=field) from None
    return await fetch(value, field=field, allow_private=settings.webhook_allow_private,
                       max_bytes=settings.max_multipart_bytes)


async def input_image(value: str | None, *, field: str, services: Services, base_url: str):
    """The decoded image an input names (None when the input is absent)."""
    if value is None:
        return None
    data = await input_bytes(value, field=field, services=services, base_url=base_url)
    return await run_cpu(decode_upload, data, param=field, max_pixels=services.settings.max_upload_pixels)

"""Which requests a web page of another site sent (cross-site request forgery), and why.

Any web page a user visits can make their browser POST a form, multipart or plain-text
body to ``http://127.0.0.1:8000`` without a CORS preflight. Without API keys (the
loopback quick start) such a write would succeed, so the API tells a browser's requests
from a program's by the headers browsers add and pages cannot forge or remove:

* ``Sec-Fetch-Site``: ``same-origin``, ``same-site``, ``cross-site`` or ``none`` (the
  user typed the address);
* ``Origin``: the page's origin, sent on every cross-origin request and on POSTs.

curl, the SDKs and other programs send neither, so they are never refused here.
A page on another origin is allowed only when its origin is listed in ``--cors-origins``.

A page can also reach a loopback server under its own name (DNS rebinding: its name is
made to resolve to 127.0.0.1), which makes its requests look same-origin; a server bound
to loopback therefore answers browsers only under loopback host names (or the host of
``--public-url``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.datastructures import Headers

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing; every other method is a state-changing request."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_browser(headers: Headers) -> bool:
    """Whether the request carries a browser's fetch metadata (``Origin`` or ``Sec-Fetch-*``)."""
    return "origin" in headers or "sec-fetch-site" in headers or "sec-fetch-mode" in headers


def cross_site_reason(headers: Headers, *, allowed_origins: Collection[str] = (), public_url: str | None = None) -> str | None:
    """Why this request comes from a page of another site, or None (same origin, an allowed
    origin, or not a browser at all)."""
    origin = headers.get("origin")
    fetch_site = (headers.get("sec-fetch-site") or "").lower()
    if origin is not None and (origin.rstrip("/") in allowed_origins or "*" in allowed_origins):
        return None
    if fetch_site in ("cross-site", "same-site"):
        named = f" (Origin {origin!r})" if origin else ""
        return f"the browser marked it Sec-Fetch-Site: {fetch_site}{named}"
    if fetch_site == "same-origin":
        # The browser's own judgement; it holds behind a proxy that rewrites Host too.
        return None
    if origin is not None and not _same_origin(origin, headers.get("host"), public_url):
        return f"Origin {origin!r} is not this server's origin"
    return None


def _same_origin(origin: str, host: str | None, public_url: str | None) -> bool:
    """Whether ``origin`` is the origin the client addressed (``Host``) or ``public_url``'s."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False  # "null" (sandboxed frames, file: pages) and other schemes
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return False
    candidates = [host] if host else []
    if public_url:
        candidates.append(urlsplit(public_url).netloc)
    for netloc in candidates:
        name, named_port = _split_host(netloc)
        if name == parts.hostname.lower() and (named_port or _DEFAULT_PORTS[parts.scheme]) == port:
            return True
    return False


def _split_host(netloc: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) as a lower-case name and a port (None: none given)."""
    parts = urlsplit(f"//{netloc.rsplit('@', 1)[-1]}")
    try:
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return (parts.hostname or "").lower(), -1


def rebinding_reason(headers: Headers, *, public_url: str | None = None) -> str | None:
    """For a server bound to loopback: why a browser reached it under a foreign host name."""
    name, _ = _split_host(headers.get("host") or "")
    if _is_loopback_name(name):
        return None
    if public_url and name == (urlsplit(public_url).hostname or "").lower():
        return None
    return (
        f"Host {headers.get('host')!r} is not a loopback name: a page reached this loopback server "
        "under another name (DNS rebinding); browse it at http://localhost or http://127.0.0.1, or set --public-url"
    )


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False

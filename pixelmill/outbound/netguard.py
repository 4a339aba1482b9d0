"""Outbound URL safety: the server only calls URLs that lead to the public internet.

A server that fetches URLs a caller names (webhooks now, image URLs later) can be
turned against its own network (SSRF): ``http://169.254.169.254/`` is a cloud metadata
service, ``http://localhost:5432/`` a database. Two layers keep that from happening:

* :func:`check_url` at submission time: http/https only, a host is required, and
  *every* address the host resolves to must be public. The caller gets a clear
  :class:`~pixelmill.core.errors.InvalidRequest` and nothing is queued.
* :func:`guarded_async_client` / :func:`guarded_client` at connection time: an httpx
  client whose network backend resolves the host itself, checks every address again and
  then connects to the *checked IP*. The URL keeps its host name, so the ``Host`` header,
  TLS SNI and certificate verification all use the original name. This defeats DNS
  rebinding (a name that resolved to a public address at check time and to
  ``127.0.0.1`` a moment later). Both clients ignore proxy environment variables (a proxy
  would make the checked address the proxy's, not the target's) and never follow
  redirects: callers treat 3xx as a failure (or re-run :func:`check_url` on the
  ``Location`` before a new request — the guarded backend checks it again anyway).

``allow_private=True`` (an operator setting, for receivers on the same host or LAN)
switches the address checks off; scheme and host checks stay.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpcore
import httpx

from pixelmill.core.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 6052 well-known NAT64 prefix: 64:ff9b::a.b.c.d reaches IPv4 a.b.c.d.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Checked in this order; the first match names the reason in the error message.
_CATEGORIES = (
    ("unspecified", "is_unspecified"),
    ("loopback", "is_loopback"),
    ("link-local", "is_link_local"),
    ("multicast", "is_multicast"),
    ("private", "is_private"),
    ("reserved", "is_reserved"),
)


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be contacted (e.g. ``"loopback"``), or None if it is public.

    IPv6 addresses that embed an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) are
    judged by the embedded address too, since the packets end up there.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(ip):
            reason = blocked_reason(inner)
            if reason:
                return f"IPv6 address embedding a {reason} address ({inner})"
    for category, attribute in _CATEGORIES:
        if getattr(ip, attribute):
            return category
    if not ip.is_global:
        # Catches what the named categories miss, e.g. 100.64.0.0/10 (carrier-grade NAT).
        return "not globally routable"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if ip in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [address for address in embedded if address is not None]


def resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses ``host`` resolves to (IP literals resolve to themselves).

    Raises :class:`socket.gaierror` (or :class:`UnicodeError` for bad names).
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # Scoped IPv6 addresses come back as "fe80::1%eth0"; the scope does not change the verdict.
    addresses = {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}
    return sorted(addresses, key=lambda a: (a.version, int(a)))


def _first_blocked(addresses: list[IPAddress]) -> tuple[IPAddress, str] | None:
    for address in addresses:
        reason = blocked_reason(address)
        if reason:
            return address, reason
    return None


def check_url(url: str, *, allow_private: bool, param: str) -> None:
    """Refuse (``InvalidRequest(param=param)``) a URL the server must not call.

    Requires http or https and a host. Unless ``allow_private``, the host is resolved
    and refused if *any* address is loopback, private, link-local, multicast, reserved,
    unspecified or otherwise not globally routable. Blocking: resolves the name.
    """
    host, port = _split(url, param)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"cannot resolve host {host!r}: {exc}", param=param) from exc
    if allow_private:
        return
    blocked = _first_blocked(addresses)
    if blocked:
        address, reason = blocked
        raise InvalidRequest(
            f"URL host {host!r} resolves to {address}, a {reason} address; only public "
            "addresses may be called", param=param,
        )


def _split(url: str, param: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"invalid URL: {exc}", param=param) from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidRequest(f"URL scheme must be http or https, not {scheme or 'missing'!r}", param=param)
    if not parts.hostname:
        raise InvalidRequest("URL has no host", param=param)
    return parts.hostname, port or DEFAULT_PORTS[scheme]


# --- connection-time guard (DNS rebinding) ---------------------------------------


def _checked_addresses(host: str, port: int, param: str) -> list[IPAddress]:
    """Resolve for a connection; refuse blocked addresses with :class:`InvalidRequest`."""
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        # A transport error, not a refusal: resolution can fail transiently.
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    blocked = _first_blocked(addresses)
    if blocked:
        address, reason = blocked
        raise InvalidRequest(f"refused to connect to {host!r}: {address} is a {reason} address", param=param)
    return addresses


class _GuardedBackend(httpcore.NetworkBackend):
    """Sync httpcore backend that connects only to checked, public addresses."""

    def __init__(self, param: str):
        self._inner = httpcore.SyncBackend()
        self._param = param

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        last_error: Exception | None = None
        for address in _checked_addresses(host, port, self._param):
            try:
                return self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc  # try the next address, like a normal resolver-driven connect
        raise last_error or httpcore.ConnectError(f"no address for {host!r}")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not allowed for outbound calls")


class _AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """Async httpcore backend that connects only to checked, public addresses."""

    def __init__(self, param: str):
        self._inner = httpcore.AnyIOBackend()
        self._param = param

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            with anyio.fail_after(timeout):
                # getaddrinfo blocks; abandon the thread if the connect timeout expires.
                addresses = await anyio.to_thread.run_sync(
                    _checked_addresses, host, port, self._param, abandon_on_cancel=True
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from exc
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error or httpcore.ConnectError(f"no address for {host!r}")

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not allowed for outbound calls")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _install(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport, backend) -> None:
    # httpx does not expose httpcore's network_backend; the pool keeps it in
    # ``_network_backend`` and hands it to every new connection. Fail loudly rather
    # than silently lose the guard should that ever change.
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, (httpcore.ConnectionPool, httpcore.AsyncConnectionPool)) or not hasattr(
        pool, "_network_backend"
    ):
        raise RuntimeError("this httpx/httpcore version does not allow a guarded network backend")
    pool._network_backend = backend


def _timeout(timeout_s: float, connect_timeout_s: float | None) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, connect=connect_timeout_s if connect_timeout_s is not None else timeout_s)


def guarded_async_client(
    *, allow_private: bool, timeout_s: float = 10.0, connect_timeout_s: float | None = None,
    param: str = "url", **client_kwargs,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for caller-named URLs.

    No redirects are followed, no proxy/netrc settings are read from the environment,
    every phase has a timeout, and (unless ``allow_private``) each new connection
    re-resolves the host and refuses blocked addresses with :class:`InvalidRequest`.
    """
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    if not allow_private:
        _install(transport, _AsyncGuardedBackend(param))
    return httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False,
        timeout=_timeout(timeout_s, connect_timeout_s), **client_kwargs,
    )


def guarded_client(
    *, allow_private: bool, timeout_s: float = 10.0, connect_timeout_s: float | None = None,
    param: str = "url", **client_kwargs,
) -> httpx.Client:
    """The synchronous twin of :func:`guarded_async_client`."""
    transport = httpx.HTTPTransport(trust_env=False)
    if not allow_private:
        _install(transport, _GuardedBackend(param))
    return httpx.Client(
        transport=transport, follow_redirects=False, trust_env=False,
        timeout=_timeout(timeout_s, connect_timeout_s), **client_kwargs,
    )

"""Outbound URL safety: what check_url refuses, and the connect-time guard of the clients.

No test leaves loopback: names other than ``localhost`` are answered by a fake resolver,
and the only connections made go to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pixelmill.outbound import netguard
from pixelmill.core.errors import InvalidRequest
from pixelmill.outbound.netguard import check_url, guarded_async_client, guarded_client

REFUSED = [
    "http://127.0.0.1/",
    "http://127.1.2.3:8080/hook",
    "http://10.0.0.5/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.10/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://100.64.0.1/",
    "http://2130706433/",  # 127.0.0.1 as one integer: the resolver decodes it
    "http://localhost:9000/",
    "https://localhost/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_private_destinations_are_refused(url):
    with pytest.raises(InvalidRequest) as info:
        check_url(url, allow_private=False, param="webhook.url")
    assert info.value.param == "webhook.url"
    assert "address" in info.value.message


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://93.184.216.34/x", "gopher://x/", "1.2.3.4/x"])
def test_only_http_and_https(url):
    with pytest.raises(InvalidRequest, match="scheme") as info:
        check_url(url, allow_private=True, param="image_url")
    assert info.value.param == "image_url"


@pytest.mark.parametrize("url", ["http:///path", "https://:443/", "http://93.184.216.34:99999/"])
def test_host_and_port_must_be_valid(url):
    with pytest.raises(InvalidRequest):
        check_url(url, allow_private=True, param="url")


PUBLIC = ["http://93.184.216.34/", "https://93.184.216.34:8443/hook?x=1", "https://[2606:4700::1111]/"]


@pytest.mark.parametrize("url", PUBLIC)
def test_public_literal_addresses_pass(url):
    check_url(url, allow_private=False, param="url")  # resolves the literal; connects nowhere


def test_allow_private_lets_loopback_through():
    check_url("http://localhost:9000/", allow_private=True, param="url")
    check_url("http://10.0.0.5/", allow_private=True, param="url")


def test_blocked_reason_names_the_category():
    reason = netguard.blocked_reason
    assert reason(ipaddress.ip_address("169.254.169.254")) == "link-local"
    assert reason(ipaddress.ip_address("127.0.0.1")) == "loopback"
    assert reason(ipaddress.ip_address("192.168.0.1")) == "private"
    assert "127.0.0.1" in reason(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert "127.0.0.1" in reason(ipaddress.ip_address("2002:7f00:1::"))  # 6to4 of loopback
    assert reason(ipaddress.ip_address("93.184.216.34")) is None


# --- fake DNS -------------------------------------------------------------------------

_real_getaddrinfo = socket.getaddrinfo


def _answer(address: str, port) -> list[tuple]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
    return [(family, socket.SOCK_STREAM, 6, "", sockaddr)]


@pytest.fixture
def fake_dns(monkeypatch):
    """``names[host]`` is a list of answers (each a list of addresses), used in turn; the last repeats."""
    names: dict[str, list[list[str]]] = {}
    calls: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in names:
            if isinstance(host, str) and host.endswith(".example"):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return _real_getaddrinfo(host, port, *args, **kwargs)
        answers = names[host]
        index = min(calls.get(host, 0), len(answers) - 1)
        calls[host] = calls.get(host, 0) + 1
        return [info for address in answers[index] for info in _answer(address, port)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def test_unresolvable_host_is_refused(fake_dns):
    with pytest.raises(InvalidRequest, match="cannot resolve"):
        check_url("https://no-such-host.example/", allow_private=False, param="url")


def test_any_private_address_among_several_is_refused(fake_dns):
    fake_dns["mixed.example"] = [["93.184.216.34", "10.1.2.3"]]
    with pytest.raises(InvalidRequest, match="10.1.2.3"):
        check_url("https://mixed.example/", allow_private=False, param="url")
    fake_dns["public.example"] = [["93.184.216.34", "2606:4700::1111"]]
    check_url("https://public.example/", allow_private=False, param="url")


# --- the connect-time guard -------------------------------------------------------------


class _Hits(BaseHTTPRequestHandler):
    hits: list[tuple[str, str]] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).hits.append((self.path, self.headers.get("Host", "")))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def receiver():
    _Hits.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hits)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1], _Hits.hits
    server.shutdown()
    server.server_close()


def test_guarded_clients_refuse_loopback_at_connect_time(receiver):
    port, hits = receiver
    with guarded_client(allow_private=False, param="image_url") as client:
        with pytest.raises(InvalidRequest) as info:
            client.get(f"http://127.0.0.1:{port}/sync")
    assert info.value.param == "image_url"

    async def fetch():
        async with guarded_async_client(allow_private=False) as client:
            await client.get(f"http://localhost:{port}/async")

    with pytest.raises(InvalidRequest, match="loopback"):
        asyncio.run(fetch())
    assert hits == []


def test_dns_rebinding_is_caught_at_connect_time(receiver, fake_dns):
    """The name is public when checked and loopback when connecting: the guard refuses."""
    port, hits = receiver
    fake_dns["rebind.example"] = [["93.184.216.34"], ["127.0.0.1"]]
    url = f"http://rebind.example:{port}/hook"
    check_url(url, allow_private=False, param="url")

    async def fetch():
        async with guarded_async_client(allow_private=False) as client:
            await client.get(url)

    with pytest.raises(InvalidRequest, match="127.0.0.1"):
        asyncio.run(fetch())
    assert hits == []


def test_guard_connects_to_the_checked_address_keeping_the_host_name(receiver, fake_dns, monkeypatch):
    """Pretend loopback is public to see the whole path: connect by IP, Host header by name."""
    port, hits = receiver
    fake_dns["images.example"] = [["127.0.0.1"]]
    monkeypatch.setattr(netguard, "blocked_reason", lambda ip: None)

    with guarded_client(allow_private=False) as client:
        assert client.get(f"http://images.example:{port}/a.png").text == "ok"

    async def fetch():
        async with guarded_async_client(allow_private=False) as client:
            return (await client.get(f"http://images.example:{port}/b.png")).text

    assert asyncio.run(fetch()) == "ok"
    assert hits == [("/a.png", f"images.example:{port}"), ("/b.png", f"images.example:{port}")]


def test_clients_do_not_follow_redirects_and_ignore_proxy_settings(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.1:3128")
    client = guarded_client(allow_private=True, timeout_s=3)
    assert client.follow_redirects is False
    assert client.timeout.connect == 3 and client.timeout.read == 3
    assert client.trust_env is False
    client.close()

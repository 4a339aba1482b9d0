"""The bind-address rule: a server reachable from the network never starts open by accident."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another host name: it could resolve to any interface
        return False


def open_refusal(host: str, *, has_keys: bool, insecure_no_auth: bool) -> str | None:
    """Why ``serve`` must not start (no keys on a non-loopback address), or None if it may."""
    if has_keys or insecure_no_auth or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} without API keys: anyone who can reach this port could "
        "generate images and read every job.\n"
        "  create a key first:   pixelmill keys create --name admin --scope admin   (same --db/--data-dir)\n"
        "  or bind to loopback:  --host 127.0.0.1\n"
        "  or, on a network you fully trust, say so explicitly:  --insecure-no-auth"
    )

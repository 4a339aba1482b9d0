"""This process's resident memory, for tests that bound growth (Linux /proc only)."""

from __future__ import annotations

import os

import pytest

STATM = "/proc/self/statm"

needs_proc = pytest.mark.skipif(not os.path.exists(STATM), reason="RSS is read from /proc (Linux)")
"""Skip marker for tests that measure RSS."""


def rss_bytes() -> int:
    """Resident set size now, in bytes (resident pages × page size)."""
    with open(STATM) as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

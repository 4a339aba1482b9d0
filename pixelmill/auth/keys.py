"""API key tokens, their hashes, scopes and per-key limits.

A key is ``pm_`` followed by 43 URL-safe characters (32 random bytes, 256 bits). Only its
SHA-256 is stored. A slow password hash (bcrypt, argon2) exists to make guessing *low-
entropy* secrets expensive; a 256-bit random token cannot be guessed however fast the
hash is, so SHA-256 loses nothing and keeps every request's key check to microseconds.
The first characters (``pm_AbCd1234``) are kept in clear as a non-secret display prefix,
so an operator can tell keys apart in ``pixelmill keys list``.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from pixelmill.core.errors import InvalidRequest

KEY_PREFIX = "pm_"
TOKEN_BYTES = 32
DISPLAY_CHARS = 8
"""Characters of the secret part shown in listings: 48 bits, useless for guessing the rest."""

_TOKEN = re.compile(r"^pm_[A-Za-z0-9_-]{43}$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


class Scope(str, enum.Enum):
    """What a key may do: ``generate`` (images and its own jobs) or ``admin`` (everything)."""

    generate = "generate"
    admin = "admin"


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``per_s`` seconds, e.g. ``60/min``."""

    count: int
    per_s: float

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "hour"}.get(int(self.per_s), f"{self.per_s:g}s")
        return f"{self.count}/{unit}"


def parse_rate(text: str) -> Rate:
    """``"60/min"`` → ``Rate(60, 60.0)``; units s, min, hour. InvalidRequest otherwise."""
    match = _RATE.match(text)
    if not match or int(match.group(1)) < 1:
        raise InvalidRequest(f"rate must look like 60/min, 5/s or 1000/hour, got {text!r}", param="rate")
    return Rate(int(match.group(1)), float(_UNIT_SECONDS[match.group(2)]))


def new_token() -> str:
    """A fresh API key: ``pm_`` + 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def looks_like_token(text: str) -> bool:
    """Whether ``text`` has the shape of a pixelmill key (cheap filter before any lookup)."""
    return bool(_TOKEN.fullmatch(text))


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token: what the store keeps and looks keys up by."""
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    """The non-secret start of a token shown in listings, e.g. ``pm_AbCd1234``."""
    return token[: len(KEY_PREFIX) + DISPLAY_CHARS]


def new_key_id() -> str:
    """A short public id for a key (what jobs record as ``api_key_id``)."""
    return "key_" + secrets.token_hex(6)


@dataclass(frozen=True)
class ApiKey:
    """A stored key as the server sees it: never the token, only its metadata."""

    id: str
    name: str
    prefix: str
    scope: Scope
    rate: str | None
    max_running: int | None
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key, or nobody in open mode (no keys, loopback), who may do all."""

    key: ApiKey | None = None

    @property
    def is_admin(self) -> bool:
        return self.key is None or self.key.scope is Scope.admin

    @property
    def key_id(self) -> str | None:
        """The id jobs of this caller record (None in open mode)."""
        return self.key.id if self.key else None

    def owns(self, job_api_key_id: str | None) -> bool:
        """Whether this caller may see a job created under ``job_api_key_id``."""
        return self.is_admin or job_api_key_id == self.key_id

    @property
    def list_filter(self) -> str | None:
        """The ``api_key_id`` to filter listings by; None = see every job."""
        return None if self.is_admin else self.key_id

    def submit_args(self) -> dict:
        """Keyword arguments for ``JobService.submit``/``run``/``submit_batch``."""
        max_active = self.key.max_running if self.key else None
        return {"api_key_id": self.key_id, "max_active": max_active}

"""The key store: API keys in the job store's database (table ``api_keys``).

Only hashes are stored. A presented token is hashed and looked up by that hash: the
database compares hashes, not secrets, so how long a lookup takes tells an attacker
nothing about the real key (they cannot choose hash prefixes); the final
``hmac.compare_digest`` is belt and braces.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from pixelmill.auth.keys import (
    ApiKey, Scope, display_prefix, hash_token, looks_like_token, new_key_id, new_token, parse_rate,
)
from pixelmill.core.errors import InvalidRequest, NotFound
from pixelmill.db.engine import read_transaction, write_transaction
from pixelmill.db.tables import api_keys, utc, utc_or_none

MAX_NAME_CHARS = 100


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id, name=row.name, prefix=row.prefix, scope=Scope(row.scope), rate=row.rate,
        max_running=row.max_running, created_at=utc(row.created_at), revoked_at=utc_or_none(row.revoked_at),
    )


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidRequest(f"a key name is 1-{MAX_NAME_CHARS} printable characters", param="name")
    return name


class KeyStore:
    """Create, list, revoke and look up API keys (one short transaction per call)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def create(
        self, name: str, *, scope: Scope | str = Scope.generate, rate: str | None = None,
        max_running: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Store a new key; returns it and the token, which is never retrievable again.

        Refuses a name that an active key already has (names are how people revoke).
        """
        name, scope = _check_name(name), Scope(scope)
        rate = str(parse_rate(rate)) if rate else None
        if max_running is not None and max_running < 1:
            raise InvalidRequest("max_running must be at least 1", param="max_running")
        token = new_token()
        row = {
            "id": new_key_id(), "name": name, "prefix": display_prefix(token), "key_hash": hash_token(token),
            "scope": scope.value, "rate": rate, "max_running": max_running,
            "created_at": datetime.now(timezone.utc), "revoked_at": None,
        }
        with write_transaction(self.engine) as conn:
            if self._active_named(conn, name):
                raise InvalidRequest(f"an active key named {name!r} exists; revoke it first", param="name")
            conn.execute(sa.insert(api_keys), [row])
        return _key(_Row(row)), token

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        """Keys, oldest first."""
        stmt = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            stmt = stmt.where(api_keys.c.revoked_at.is_(None))
        with read_transaction(self.engine) as conn:
            return [_key(row) for row in conn.execute(stmt)]

    def revoke(self, id_or_name: str) -> ApiKey:
        """Revoke the active key with this id (or name); NotFound if there is none."""
        now = datetime.now(timezone.utc)
        with write_transaction(self.engine) as conn:
            rows = self._active_named(conn, id_or_name) or self._active_with_id(conn, id_or_name)
            if not rows:
                raise NotFound(f"no active key with id or name {id_or_name!r}", param="key")
            target = rows[0]
            stmt = sa.update(api_keys).where(api_keys.c.id == target.id).values(revoked_at=now)
            conn.execute(stmt)
        return _key(_Row({**target._mapping, "revoked_at": now}))

    def lookup(self, token: str) -> ApiKey | None:
        """The active key whose token this is, or None."""
        if not looks_like_token(token):
            return None
        digest = hash_token(token)
        stmt = sa.select(api_keys).where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))
        with read_transaction(self.engine) as conn:
            row = conn.execute(stmt).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return _key(row)

    def has_active(self) -> bool:
        """Whether any key is active (then every request must carry one)."""
        stmt = sa.select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)
        with read_transaction(self.engine) as conn:
            return conn.execute(stmt).first() is not None

    @staticmethod
    def _active_named(conn: sa.Connection, name: str) -> list:
        stmt = sa.select(api_keys).where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
        return conn.execute(stmt).all()

    @staticmethod
    def _active_with_id(conn: sa.Connection, key_id: str) -> list:
        stmt = sa.select(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        return conn.execute(stmt).all()


class _Row:
    """Attribute access over a column dict, so fresh rows convert like fetched ones."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)

"""Admin routes for API keys: ``GET/POST /v1/keys``, ``DELETE /v1/keys/{id}``.

The same operations as ``pixelmill keys``; a created key's token is in the POST answer
and nowhere else, ever.

Two guards against a careless or hostile local client (issue 19 §8):

* **The first key needs ``confirm_enable_keys: true``.** With no keys a loopback server
  is open, so any local process may call this route; creating the first key switches
  authentication on for every client at once, locking out all that have no key. That is
  refused (400 naming ``confirm_enable_keys``) unless the body says it knowingly.
  ``pixelmill keys create`` needs no flag: whoever runs it owns the data directory.
* **Names are unique among active keys** (people revoke by name): a duplicate is
  409 naming ``name``. The store refuses duplicates too; a process-wide lock makes its
  check-then-insert atomic for the requests of this process.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from pixelmill.api.auth import get_authenticator, require_admin
from pixelmill.api.errors import wire_params
from pixelmill.api.params import KeyRef
from pixelmill.auth.keys import ApiKey
from pixelmill.auth.store import KeyStore
from pixelmill.core.errors import Conflict, InvalidRequest

router = APIRouter(prefix="/v1", tags=["Keys (admin)"], dependencies=[Depends(require_admin)])

FIRST_KEY_WARNING = (
    "this server has no API keys: creating the first one turns authentication on for every "
    "client, and every request without a key gets 401 from then on. Send "
    '"confirm_enable_keys": true to do it (or run `pixelmill keys create` on the server)'
)
_CREATE_LOCK = threading.Lock()  # one create at a time: the first-key and name checks hold


class NameTaken(Conflict):
    """An active key already has this name (409 through the error table)."""

    code = "name_taken"


class KeyCreate(BaseModel):
    """A new key: a name people recognise, a scope, optional limits."""

    name: str = Field(min_length=1, max_length=100)
    scope: Literal["generate", "admin"] = "generate"
    rate: str | None = Field(None, max_length=32, description="Submissions per period, e.g. 60/min.")
    max_running: int | None = Field(None, ge=1, le=100_000, description="Queued+running jobs at most.")
    confirm_enable_keys: bool = Field(False, description=(
        "Required (true) to create the first key: from then on every request needs a key, so "
        "clients without one are locked out. Ignored once keys exist."))


class KeyPublic(BaseModel):
    """A key as listings show it: never the token, only its non-secret prefix."""

    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    prefix: str
    scope: Literal["generate", "admin"]
    rate: str | None = None
    max_running: int | None = None
    created_at: datetime
    revoked_at: datetime | None = None

    @classmethod
    def of(cls, key: ApiKey) -> KeyPublic:
        return cls(
            id=key.id, name=key.name, prefix=key.prefix, scope=key.scope.value, rate=key.rate,
            max_running=key.max_running, created_at=key.created_at, revoked_at=key.revoked_at,
        )


class KeyCreated(KeyPublic):
    """The answer to a create: the only time the token is shown."""

    key: str = Field(description="The API key. Store it now: pixelmill keeps only its hash.")


class KeyList(BaseModel):
    """Active keys, oldest first."""

    object: Literal["list"] = "list"
    data: list[KeyPublic]


@router.get("/keys", response_model=KeyList)
async def list_keys(request: Request) -> KeyList:
    """Active API keys (admin)."""
    keys = await asyncio.to_thread(get_authenticator(request).keys.list)
    return KeyList(data=[KeyPublic.of(key) for key in keys])


@router.post("/keys", status_code=201, response_model=KeyCreated,
             responses={409: {"description": "An active key has this name."}})
async def create_key(body: KeyCreate, request: Request) -> KeyCreated:
    """Create an API key (admin); the answer holds the key, shown this once.

    The first key needs ``confirm_enable_keys: true``; a name an active key has is 409.
    """
    key, token = await asyncio.to_thread(_create, get_authenticator(request).keys, body)
    return KeyCreated(**KeyPublic.of(key).model_dump(), key=token)


def _create(store: KeyStore, body: KeyCreate) -> tuple[ApiKey, str]:
    """Blocking: the guards of the module docstring, then the store's create."""
    with _CREATE_LOCK:
        if not body.confirm_enable_keys and not store.has_active():
            raise InvalidRequest(FIRST_KEY_WARNING, param="confirm_enable_keys")
        name = body.name.strip()
        if name and any(key.name == name for key in store.list()):
            raise NameTaken(f"an active key named {name!r} exists; choose another name or revoke it first",
                            param="name")
        return store.create(body.name, scope=body.scope, rate=body.rate, max_running=body.max_running)


@router.delete("/keys/{key_id}", response_model=KeyPublic)
async def revoke_key(key_id: KeyRef, request: Request) -> KeyPublic:
    """Revoke an API key by id or name (admin); requests with it fail at once."""
    with wire_params({"key": "key_id"}):
        key = await asyncio.to_thread(get_authenticator(request).keys.revoke, key_id)
    return KeyPublic.of(key)

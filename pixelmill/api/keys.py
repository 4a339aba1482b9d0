"""Admin routes for API keys: ``GET/POST /v1/keys``, ``DELETE /v1/keys/{id}``.

The same operations as ``pixelmill keys``; a created key's token is in the POST answer
and nowhere else, ever.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from pixelmill.api.auth import get_authenticator, require_admin
from pixelmill.auth.keys import ApiKey

router = APIRouter(prefix="/v1", tags=["Keys (admin)"], dependencies=[Depends(require_admin)])


class KeyCreate(BaseModel):
    """A new key: a name people recognise, a scope, optional limits."""

    name: str = Field(min_length=1, max_length=100)
    scope: Literal["generate", "admin"] = "generate"
    rate: str | None = Field(None, max_length=32, description="Submissions per period, e.g. 60/min.")
    max_running: int | None = Field(None, ge=1, le=100_000, description="Queued+running jobs at most.")


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


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, request: Request) -> KeyCreated:
    """Create an API key (admin); the answer holds the key, shown this once."""
    store = get_authenticator(request).keys
    key, token = await asyncio.to_thread(
        store.create, body.name, scope=body.scope, rate=body.rate, max_running=body.max_running
    )
    return KeyCreated(**KeyPublic.of(key).model_dump(), key=token)


@router.delete("/keys/{key_id}", response_model=KeyPublic)
async def revoke_key(key_id: str, request: Request) -> KeyPublic:
    """Revoke an API key by id (admin); requests with it fail at once."""
    key = await asyncio.to_thread(get_authenticator(request).keys.revoke, key_id)
    return KeyPublic.of(key)

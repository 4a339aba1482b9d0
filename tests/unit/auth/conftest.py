"""An in-process app (no engine, no lifespan) with a key store, and a way to call it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import pytest

from pixelmill.server import build_app
from pixelmill.settings import Settings

JOB = {"prompt": "x", "width": 64, "height": 64, "steps": 1}


@dataclass
class App:
    """The app plus helpers: ``call`` with an optional bearer key, ``new_key`` via the store."""

    app: object

    @property
    def keys(self):
        return self.app.state.auth.keys

    def new_key(self, name: str, **options) -> str:
        return self.keys.create(name, **options)[1]

    def call(self, method: str, path: str, key: str | None = None, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {}) | ({"Authorization": f"Bearer {key}"} if key else {})

        async def go():
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, path, headers=headers, **kwargs)

        return asyncio.run(go())


@pytest.fixture()
def make_app(tmp_path):
    def make(**settings) -> App:
        base = {"models_dir": tmp_path / "models", "data_dir": tmp_path / "data", "workers": 0}
        return App(build_app(Settings(**(base | settings))))

    return make

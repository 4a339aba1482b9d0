"""Routes that are not an API dialect: ``/health`` and ``/v1/files/{id}``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from pixelmill import __version__
from pixelmill.api.deps import ServicesDep
from pixelmill.engine.runner import EngineState

router = APIRouter(tags=["System"])


@router.get("/health")
async def health(services: ServicesDep) -> JSONResponse:
    """Liveness and readiness: 200 once the model is loaded, 503 while loading or failed.

    Answers from memory only, so it stays instant while the engine is generating.
    """
    runner = services.runner
    body: dict = {"version": __version__, "workers": len(services.workers)}
    if runner is None:  # API-only host: ready as soon as it serves
        return JSONResponse(body | {"status": EngineState.ready.value, "busy": False})
    body |= {"status": runner.state.value, "busy": runner.busy}
    if runner.state is EngineState.ready:
        info = runner.engine.info
        body |= {"model": info.model, "demo": info.demo, "device": info.device, "dtype": info.dtype}
    elif runner.error:
        body["error"] = runner.error
    return JSONResponse(body, status_code=200 if runner.state is EngineState.ready else 503)


@router.get(
    "/v1/files/{file_id}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
)
async def download_file(file_id: str, services: ServicesDep) -> Response:
    """A generated image, for ``response_format=url``; expires after the retention period."""
    stored = await asyncio.to_thread(services.results.get, file_id)
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}
    if stored.path is not None:
        return FileResponse(stored.path, media_type=stored.media_type, headers=headers)
    return Response(stored.data, media_type=stored.media_type, headers=headers)

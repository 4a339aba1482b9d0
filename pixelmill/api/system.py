"""Routes that are not an API dialect: ``/health`` and ``/v1/files/{id}``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from pixelmill import __version__
from pixelmill.api.deps import ServicesDep
from pixelmill.api.params import FileId
from pixelmill.core.backend import BackendState
from pixelmill.jobs.supervisor import WorkerState
from pixelmill.jobs.worker import Worker

router = APIRouter(tags=["System"])

READY, LOADING, DEGRADED, FAILED = "ready", "loading", "degraded", "failed"
_BEST_FIRST = (READY, LOADING, DEGRADED, FAILED)
"""The server's status is the best of its workers': one worker that can run jobs is enough."""


def _worker_status(worker: Worker) -> str:
    if worker.backend.state is BackendState.failed:
        return FAILED
    if worker.health.state is WorkerState.degraded:
        return DEGRADED
    return LOADING if worker.backend.state is BackendState.loading else READY


@router.get("/health")
async def health(services: ServicesDep) -> JSONResponse:
    """Liveness and readiness: 200 once a worker can generate; 503 while loading, when the
    model failed to load, or ``degraded`` while no worker can run (the reason in ``error``).

    Answers from memory only, so it stays instant while the engine is generating.
    """
    body: dict = {"version": __version__, "workers": len(services.workers)}
    if not services.workers:  # API-only host: ready as soon as it serves
        return JSONResponse(body | {"status": READY, "busy": False})
    statuses = [_worker_status(worker) for worker in services.workers]
    status = min(statuses, key=_BEST_FIRST.index)
    body |= {"status": status, "busy": any(worker.backend.busy for worker in services.workers)}
    info = next((w.backend.info for w, s in zip(services.workers, statuses) if s == READY), None)
    if info is not None:
        body |= {"model": info.model, "demo": info.demo, "device": info.device, "dtype": info.dtype}
    if status != READY and (error := services.availability.unavailable()) is not None:
        body["error"] = error.message
    return JSONResponse(body, status_code=200 if status == READY else 503)


@router.get(
    "/v1/files/{file_id}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
)
async def download_file(file_id: FileId, services: ServicesDep) -> Response:
    """A generated image, for ``response_format=url``; expires after the retention period."""
    stored = await asyncio.to_thread(services.results.get, file_id)
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}
    if stored.path is not None:
        return FileResponse(stored.path, media_type=stored.media_type, headers=headers)
    return Response(stored.data, media_type=stored.media_type, headers=headers)

"""Native routes: ``POST /v1/generate``, as JSON or as a Server-Sent Events stream.

With ``Accept: text/event-stream`` the response streams ``progress`` events
(``{"step", "total"}``) and ends with one ``result`` (the JSON body) or ``error`` event
(the error envelope). The CLI's progress bar reads this stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from pixelmill.api.deps import ServicesDep
from pixelmill.api.errors import error_body, request_id_of, wire_params
from pixelmill.api.native.protocol import PARAM_NAMES, GenerationCreate, GenerationPublic
from pixelmill.domain import GenerationRequest, Progress
from pixelmill.errors import PixelmillError
from pixelmill.services import Services

router = APIRouter(prefix="/v1", tags=["Native"])


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _stream(services: Services, request: GenerationRequest, request_id: str | None) -> AsyncIterator[bytes]:
    events: asyncio.Queue[Progress] = asyncio.Queue()
    task = asyncio.create_task(services.generation.generate(request, on_progress=events.put_nowait))
    try:
        while not task.done() or not events.empty():
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield _sse("progress", getter.result().model_dump())
            else:
                getter.cancel()
        yield _sse("result", GenerationPublic.from_result(task.result()).model_dump())
    except PixelmillError as exc:
        yield _sse("error", error_body(exc, request_id))
    finally:
        task.cancel()  # the client went away: the runner stops the generation at the next step


@router.post(
    "/generate",
    response_model=GenerationPublic,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def generate(body: GenerationCreate, http: Request, services: ServicesDep):
    """Generate images with every engine parameter; stream progress with ``Accept: text/event-stream``."""
    with wire_params(PARAM_NAMES):
        request = services.generation.prepare(body.to_request(services.settings))
    if "text/event-stream" in http.headers.get("accept", ""):
        return StreamingResponse(
            _stream(services, request, request_id_of(http)), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    with wire_params(PARAM_NAMES):
        result = await services.generation.generate(request)
    return GenerationPublic.from_result(result)

"""The naive baseline: an SDXL server built the way the common tutorial builds it.

FastAPI, one global diffusers pipeline loaded with ``StableDiffusionXLPipeline.from_pretrained``,
and the pipeline called *directly inside an ``async def`` handler*. That is the whole
design, and its two consequences are what the benchmark shows:

* one request at a time: the handler never awaits while the pipeline runs, so the
  event loop cannot start another request (and nothing batches them);
* the event loop is blocked for the whole generation, so ``/health`` (and every other
  route) waits behind it.

This file is deliberately *not* improved (no thread pool, no batching, no queue): it
is the baseline pixelmill is measured against. Run it with
``python -m bench.reference_server --model-dir MODELS/checkpoints/demo --port 8001``.
"""

from __future__ import annotations

import argparse
import base64
import io

import torch
import uvicorn
from diffusers import StableDiffusionXLPipeline
from fastapi import FastAPI
from pydantic import BaseModel


class GenerateBody(BaseModel):
    """What the tutorial's endpoint takes."""

    prompt: str
    steps: int = 20
    width: int = 256
    height: int = 256
    seed: int = 0
    guidance: float = 5.0


def build_app(model_dir: str) -> FastAPI:
    """The tutorial's app: a global pipeline and two ``async def`` routes."""
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, use_safetensors=True)
    app = FastAPI(title="reference SDXL server (tutorial style)")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/generate")
    async def generate(body: GenerateBody) -> dict:
        # The tutorial's line: a blocking call on the event loop's own thread.
        image = pipe(
            body.prompt, num_inference_steps=body.steps, width=body.width, height=body.height,
            guidance_scale=body.guidance, generator=torch.Generator().manual_seed(body.seed),
        ).images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"image": base64.b64encode(buffer.getvalue()).decode()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a diffusers SDXL folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(build_app(args.model_dir), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

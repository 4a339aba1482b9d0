"""Batch intake: a batch's size is checked before anything is expanded or decoded.

``POST /v1/batches`` names its jobs as a list of requests or as one template × prompts ×
a seed range, so a 5 KB body can ask for 1000 × 1000 jobs. The counts are computed
arithmetically from the body and refused before a single job is built; building (base64,
decoding and re-encoding images) then runs in the CPU pool, never on the event loop, and
a template's images are decoded once for all of its jobs.
"""

from __future__ import annotations

from pixelmill.api.native.protocol import BatchCreate
from pixelmill.core.errors import InvalidRequest
from pixelmill.core.types import GenerationRequest
from pixelmill.settings import Settings

MAX_BATCH_JOBS = 1000
"""Most jobs in one batch, whatever ``--max-batch-images`` allows."""


def batch_counts(body: BatchCreate) -> tuple[int, int, str]:
    """(jobs, images, param): what the batch would queue, and the field that sets its size."""
    if body.requests is not None:
        return len(body.requests), sum(max(1, item.n) for item in body.requests), "requests"
    if body.request is None:
        return 0, 0, "request"  # malformed: building it names what is missing
    prompts = len(body.prompts) if body.prompts else 1
    seeds = body.seeds.count if body.seeds else 1
    jobs = prompts * seeds
    return jobs, jobs * max(1, body.request.n), "seeds" if body.seeds else "prompts"


def check_batch_size(body: BatchCreate, settings: Settings) -> None:
    """:class:`InvalidRequest` if the batch has too many jobs or images; nothing is built."""
    jobs, images, param = batch_counts(body)
    if jobs > MAX_BATCH_JOBS:
        raise InvalidRequest(f"a batch holds at most {MAX_BATCH_JOBS} jobs, this one {jobs:,}", param=param)
    if images > settings.max_batch_images:
        raise InvalidRequest(
            f"a batch makes at most {settings.max_batch_images} images (jobs × n), this one {images:,}", param=param
        )


def build_requests(body: BatchCreate, settings: Settings) -> list[GenerationRequest]:
    """Every job's request, prompt-major then seed (blocking: run it in the CPU pool)."""
    if body.requests is not None or body.request is None:
        return [item.to_request(settings) for item in body.expand()]
    # A template's translation does not depend on its prompt or seed, so its images are
    # decoded (and charged to the request's pixel budget) once, not once per job.
    template = body.request.to_request(settings)
    prompts = body.prompts or [body.request.prompt]
    seeds = range(body.seeds.start, body.seeds.start + body.seeds.count) if body.seeds else [body.request.seed]
    return [template.model_copy(update={"prompt": prompt, "seed": seed}) for prompt in prompts for seed in seeds]

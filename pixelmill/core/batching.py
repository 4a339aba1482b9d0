"""Which requests may share one pipeline call: the batch key.

Two requests with equal keys run as one batch in the worker; each image still gets its
own prompt, negative prompt and seed, so a batched image equals the image made alone.
Everything that shapes the denoising call for all samples at once is in the key.
No framework imports: the job store calls this while claiming.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Hashable

from PIL import Image

from pixelmill.core.types import GenerationRequest, Mode
from pixelmill.core.samplers import canonical_scheduler


def _size(request: GenerationRequest) -> tuple[int | None, int | None]:
    """The size the request will run at, as far as it can be known without a model."""
    if request.width is not None or request.init_image is None:
        return request.width, request.height
    with Image.open(io.BytesIO(request.init_image)) as image:  # header only: cheap
        return image.width - image.width % 8, image.height - image.height % 8


def batch_key(request: GenerationRequest) -> Hashable:
    """Requests with equal keys can run in one pipeline call.

    ControlNet requests (a control image per request) never share a call: they get a
    key of their own.
    """
    if request.controlnets:
        return ("solo", secrets.token_hex(8))
    return (
        request.model,
        request.mode.value,
        _size(request),
        request.steps,
        canonical_scheduler(request.scheduler) if request.scheduler else None,
        request.guidance,
        request.clip_skip,
        request.strength if request.mode is not Mode.txt2img else None,
        bool(request.negative_prompt),
        tuple(sorted((lora.name, lora.weight) for lora in request.loras)),
        (request.refiner.name, request.refiner.switch_at) if request.refiner else None,
    )


class Arrivals:
    """Recent job arrival times: tells a worker whether waiting for company can pay off.

    A worker with a batch smaller than ``max_batch_size`` may wait ``max_batch_wait_ms``
    for compatible jobs. When the last ``sample`` jobs each arrived more than ``gap_s``
    after the one before (one client sending request after request, a trickle of
    traffic), nothing is likely to join within the wait, and it would only leave the
    engine idle, so the worker starts at once. Any recent pair of close arrivals (a
    burst, several clients) brings the wait back; with too little history, it waits.
    """

    def __init__(self, gap_s: float, sample: int = 4):
        self.gap_s = gap_s
        self.sample = sample
        self._times: list[float] = []

    def add(self, times: list[float]) -> None:
        """Record arrivals (seconds since any fixed origin, e.g. ``created_at`` timestamps)."""
        self._times = sorted([*self._times, *times])[-(self.sample + 1):]

    def expect_company(self) -> bool:
        """False only when every recent arrival came well apart from the one before."""
        if len(self._times) <= self.sample:
            return True
        gaps = [later - earlier for earlier, later in zip(self._times, self._times[1:])]
        return any(gap <= self.gap_s for gap in gaps)

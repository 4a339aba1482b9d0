"""Which requests may share one pipeline call: the batch key.

Two requests with equal keys run as one batch in the worker; each image still gets its
own prompt, negative prompt and seed, so a batched image equals the image made alone.
Everything that shapes the denoising call for all samples at once is in the key.
The key reads the fields of a resolved request (:func:`pixelmill.core.policy.resolve`)
as they are: size, steps, scheduler and model were settled before the job was stored.
No framework imports: the job store calls this while claiming.
"""

from __future__ import annotations

import secrets
from collections.abc import Hashable

from pixelmill.core.types import GenerationRequest, Mode


def batch_key(request: GenerationRequest) -> Hashable:
    """Requests with equal keys can run in one pipeline call.

    ControlNet requests (a control image per request) never share a call: they get a
    key of their own. So does an img2img/inpaint request without a size (one queued
    before the policy resolved sizes): its size is not known here, and guessing it
    would be a second size rule.
    """
    if request.controlnets or (request.width is None and request.mode is not Mode.txt2img):
        return ("solo", secrets.token_hex(8))
    return (
        request.model,
        request.mode.value,
        (request.width, request.height),  # None for txt2img: the model's native size
        request.steps,
        request.scheduler,
        request.guidance,
        request.clip_skip,
        request.strength if request.mode is not Mode.txt2img else None,
        bool(request.negative_prompt),
        tuple(sorted((lora.name, lora.weight) for lora in request.loras)),
        (request.refiner.name, request.refiner.switch_at) if request.refiner else None,
        getattr(request, "family", None),  # set on resolved requests: FLUX and SDXL never share a call
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

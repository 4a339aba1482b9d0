"""``torch.compile`` without recompiles inside requests: shape buckets, warm-up, flags, logs.

A compiled graph is specialised on its input shapes (``dynamic=False``); a shape it has
not seen compiles again, which takes minutes on a real SDXL UNet and would land inside a
user's request. So the shapes are fixed up front:

* ``--compile-buckets`` lists ``BATCHxWIDTHxHEIGHT`` shapes (:func:`parse_buckets`), all
  compiled by :func:`warm_up` before the server takes requests (default: the model's
  native size at batch 1);
* a batch of fewer images is padded up to the smallest bucket of its size that holds it
  (:func:`choose_bucket`; the engine adds throw-away images and drops them), so batch
  sizes never meet a new shape. Sizes are matched exactly (padding pixels would change
  the image): a size no bucket lists compiles once, and is logged as such.

Every recompile that still happens is logged with dynamo's own reason (a guard failure:
"tensor 'sample' size mismatch at index 0 ...") by :func:`log_recompiles`, and counted
in :data:`RECOMPILES`. :func:`configure_inductor` sets the inductor flags of the diffusers
performance guide; :func:`configure_cuda_backends` turns on cuDNN autotuning and TF32.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from typing import Any

import torch

from pixelmill.core.errors import ModelUnavailable

log = logging.getLogger(__name__)

Bucket = tuple[int, int, int]
"""``(batch, width, height)``: images per pipeline call and their size."""

_BUCKET = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*$")
RECOMPILES: list[str] = []
"""The reason of every recompile seen since :func:`log_recompiles` (newest last, bounded)."""
_MAX_KEPT = 100
_RECOMPILE_LOGGER = "torch._dynamo.guards.__recompiles"


def parse_buckets(entries: Iterable[str]) -> tuple[Bucket, ...]:
    """``["4x1024x1024", "1x832x1216"]`` → sorted, de-duplicated ``(batch, width, height)``.

    Raises :class:`ModelUnavailable` (a startup error naming the setting) for a malformed
    entry, a batch below 1 or a side that is not a multiple of 8.
    """
    buckets = set()
    for entry in entries:
        match = _BUCKET.match(entry)
        if match is None:
            raise ModelUnavailable(f"compile_buckets: {entry!r} is not BATCHxWIDTHxHEIGHT (e.g. 1x1024x1024)")
        batch, width, height = (int(group) for group in match.groups())
        if batch < 1 or width % 8 or height % 8 or not width or not height:
            raise ModelUnavailable(f"compile_buckets: {entry!r} needs a batch of at least 1 and sides "
                                   "that are positive multiples of 8")
        buckets.add((batch, width, height))
    return tuple(sorted(buckets, key=lambda b: (b[1], b[2], b[0])))


def default_buckets(buckets: tuple[Bucket, ...], native: tuple[int, int]) -> tuple[Bucket, ...]:
    """The configured buckets, or the native size at batch 1 when none are configured."""
    return buckets or ((1, native[0], native[1]),)


def choose_bucket(buckets: Iterable[Bucket], images: int, width: int, height: int) -> Bucket | None:
    """The smallest bucket of ``width`` x ``height`` holding ``images`` images, or None
    (no bucket of that size, or all are smaller: that call compiles a new shape)."""
    fitting = [b for b in buckets if b[1] == width and b[2] == height and b[0] >= images]
    return min(fitting, default=None)


def padding_for(buckets: Iterable[Bucket], images: int, width: int, height: int) -> int:
    """How many throw-away images make a call of ``images`` images hit a warmed bucket."""
    bucket = choose_bucket(buckets, images, width, height)
    return 0 if bucket is None else bucket[0] - images


# --- flags ---------------------------------------------------------------------------------


def configure_inductor() -> None:
    """The inductor settings diffusers' SDXL performance guide compiles with."""
    import torch._inductor.config as inductor

    inductor.conv_1x1_as_mm = True
    inductor.coordinate_descent_tuning = True
    inductor.epilogue_fusion = False
    inductor.coordinate_descent_check_all_directions = True


RECOMPILE_LIMIT = 32
"""Graphs dynamo keeps per function before it gives up compiling it (default 8): buckets,
guidance on/off and the LoRA slots' few sizes and on/off states each keep one."""


def configure_dynamo() -> None:
    """Room for every warmed bucket and LoRA-slot variant (see :data:`RECOMPILE_LIMIT`):
    past the limit dynamo would silently run the UNet uncompiled."""
    import torch._dynamo.config as dynamo

    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)


def configure_cuda_backends() -> None:
    """cuDNN picks the fastest convolution per shape (shapes are few: buckets), and fp32
    matmuls/convolutions may use TF32 tensor cores (the fp32 VAE decode, the schedulers)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


class _RecompileHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        reason = record.getMessage()
        RECOMPILES.append(reason)
        del RECOMPILES[:-_MAX_KEPT]
        log.warning("torch.compile recompiled (a shape or guard not warmed up): %s", reason)


def log_recompiles() -> None:
    """Log every dynamo recompile, with its guard-failure reason, through pixelmill's log.

    Idempotent. Turns on torch's ``recompiles`` log artifact and takes its records over
    (torch would otherwise print them to stderr in its own format).
    """
    target = logging.getLogger(_RECOMPILE_LOGGER)
    if any(isinstance(handler, _RecompileHandler) for handler in target.handlers):
        return
    torch._logging.set_logs(recompiles=True)
    target.addHandler(_RecompileHandler())
    target.propagate = False


# --- warm-up ---------------------------------------------------------------------------------


def warm_up(pipe: Any, buckets: Iterable[Bucket], *, decode=None, guidance: float = 5.0,
            before_each=None) -> list[float]:
    """Run a 2-step generation per bucket so every shape compiles now; seconds per bucket.

    ``decode(pipe, latents)`` is the engine's own VAE decode (:mod:`pixelmill.engine.vae`),
    so the compiled decoder is warmed at the same shapes; None: the pipeline decodes.
    With guidance on (batch 2x in the UNet), as most requests run. ``before_each()`` runs
    before every bucket (the engine's CUDA-graph step mark, as before every request).
    """
    took = []
    for batch, width, height in buckets:
        start = time.perf_counter()
        # no_grad, as diffusers' own __call__ uses: a graph compiled under inference_mode has
        # other dispatch keys, and the first real request would compile all over again.
        with torch.no_grad():
            if before_each is not None:
                before_each()
            result = pipe(prompt=["warmup"] * batch, num_inference_steps=2, width=width, height=height,
                          guidance_scale=guidance, output_type="latent" if decode else "np",
                          generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)])
            if decode is not None:
                decode(pipe, result.images)
        took.append(time.perf_counter() - start)
        log.info("warm-up of bucket %dx%dx%d took %.1f s", batch, width, height, took[-1])
    return took

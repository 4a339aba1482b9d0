"""The engine: loaded models on one device, and ``generate(request) -> JobResult``.

An :class:`Engine` is not thread-safe on purpose: exactly one thread (the
:class:`~pixelmill.engine.runner.EngineRunner`) calls it, so a pipeline object is never
used by two requests at once. It knows nothing about HTTP or jobs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from pixelmill import __version__
from pixelmill.domain import GeneratedImage, GenerationRequest, JobResult, Mode
from pixelmill.engine.generation import run_batch
from pixelmill.engine.imageio import a1111_parameters, encode_image
from pixelmill.engine.models import ModelSource, load_source, resolve_source
from pixelmill.errors import GenerationFailed, ModelUnavailable, PixelmillError
from pixelmill.registry import ModelKind, ModelRegistry
from pixelmill.settings import DEFAULT_HUB_MODEL, DEMO_MODEL, Settings

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class EngineInfo:
    """What the engine serves, for ``/health`` and ``/v1/models``."""

    model: str
    demo: bool
    device: str
    dtype: str
    native_size: tuple[int, int]


def _quiet_libraries() -> None:
    """Keep the server log for pixelmill's own lines: no tqdm bars, no library chatter."""
    import diffusers
    import transformers

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


class Engine:
    """Owns the device and the loaded model; runs one generation at a time."""

    def __init__(self, settings: Settings, registry: ModelRegistry):
        from pixelmill.engine.device import select_device

        _quiet_libraries()
        self.settings = settings
        self.registry = registry
        self.device = select_device(
            settings.device,
            offload=settings.offload,
            vae_tiling=settings.vae_tiling,
            vae_slicing=settings.vae_slicing,
            compile=settings.compile,
        )
        self._pipes = None  # PipelineSet of the loaded model
        self._source: ModelSource | None = None
        self.demo = False

    # ------------------------------------------------------------------ loading
    def start(self) -> EngineInfo:
        """Load the default model (falling back to the demo model if none was chosen)."""
        self.registry.refresh()
        if self.settings.model:
            self._load(resolve_source(self.settings.model, self.registry))
        else:
            self._load_default_or_demo()
        return self.info

    def _load_default_or_demo(self) -> None:
        try:
            self._load(ModelSource(DEFAULT_HUB_MODEL, "hub", DEFAULT_HUB_MODEL))
            return
        except ModelUnavailable as exc:
            log.warning(
                "\n%s\n  No model configured and %s could not be loaded (%s).\n"
                "  SERVING THE RANDOM-WEIGHT DEMO MODEL: images will be noise.\n"
                "  Set --model / PIXELMILL_MODEL to a checkpoint to serve real images.\n%s",
                "!" * 78, DEFAULT_HUB_MODEL, exc.message, "!" * 78,
            )
        self._load(self._demo_source())
        self.demo = True

    def _demo_source(self) -> ModelSource:
        entry = self.registry.find(ModelKind.checkpoint, DEMO_MODEL)
        if entry is None:
            from pixelmill.engine.demo import write_demo_models

            target = self.settings.demo_models_dir
            if not (target / "checkpoints" / DEMO_MODEL / "model_index.json").is_file():
                log.info("writing the demo model to %s", target)
                write_demo_models(target)
            return ModelSource(DEMO_MODEL, "folder", str(target / "checkpoints" / DEMO_MODEL))
        return ModelSource(entry.name, "folder", str(entry.path))

    def _load(self, source: ModelSource) -> None:
        from pixelmill.engine.pipelines import PipelineSet

        if self._source == source:
            return
        self.unload()
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        pipe = load_source(source, self.device, local_files_only=offline)
        self._pipes = PipelineSet(pipe, source.name, self.device)
        if self.device.compile:
            from pixelmill.engine.device import warmup

            warmup(pipe, *self._pipes.native_size)  # compile now, not on the first request
        self._source = source
        self.demo = source.name == DEMO_MODEL
        log.info("model %s ready on %s (%s)", source.name, self.device.device, self.device.dtype)

    def unload(self) -> None:
        """Free the loaded model's memory."""
        if self._pipes is not None:
            self._pipes.close()
        self._pipes, self._source = None, None

    @property
    def info(self) -> EngineInfo:
        if self._pipes is None or self._source is None:
            raise ModelUnavailable("no model is loaded yet")
        return EngineInfo(
            model=self._source.name,
            demo=self.demo,
            device=self.device.device,
            dtype=str(self.device.dtype).removeprefix("torch."),
            native_size=self._pipes.native_size,
        )

    def model_for(self, requested: str | None) -> ModelSource:
        """The model a request means: the loaded one, an alias of it, or a registry name."""
        if self._source is None:
            raise ModelUnavailable("no model is loaded yet")
        if requested in (None, "", self._source.name) or requested in self.settings.model_aliases:
            return self._source
        if requested in self.settings.default_model_names:
            return self._source  # the default model, or the demo it fell back to
        entry = self.registry.resolve(ModelKind.checkpoint, requested, param="model")
        return ModelSource(entry.name, "single_file" if entry.single_file else "folder", str(entry.path))

    # --------------------------------------------------------------- generation
    def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressCallback | None = None,
        is_canceled: CancelCheck | None = None,
    ) -> JobResult:
        """Generate ``request.n`` images; raises ``GenerationCanceled`` if canceled."""
        return self.generate_batch([request], on_progress=on_progress, is_canceled=is_canceled)[0]

    def generate_batch(
        self,
        requests: list[GenerationRequest],
        *,
        on_progress: ProgressCallback | None = None,
        is_canceled: CancelCheck | None = None,
    ) -> list[JobResult]:
        """Generate compatible requests (equal batch keys) in one pipeline call.

        Each result's ``gpu_seconds`` is its share of the call's wall time, by images.
        """
        self._load(self.model_for(requests[0].model))
        assert self._pipes is not None and self._source is not None
        started = time.perf_counter()
        try:
            outputs = run_batch(self._pipes, requests, on_progress=on_progress, is_canceled=is_canceled)
        except PixelmillError:
            raise
        except Exception as exc:  # a diffusers/torch failure is a server fault, not the caller's
            log.exception("generation failed")
            raise self._as_failure(exc) from exc
        elapsed = time.perf_counter() - started
        total_images = sum(r.n for r in requests)
        return [
            JobResult(
                images=[self._encode(request, output.sampler, img, seed) for img, seed in zip(output.images, output.seeds)],
                seed=output.seeds[0], model=self._source.name, width=output.width, height=output.height,
                steps=request.steps, sampler=output.sampler, gpu_seconds=elapsed * request.n / total_images,
            )
            for request, output in zip(requests, outputs)
        ]

    @staticmethod
    def _as_failure(exc: Exception) -> PixelmillError:
        if "out of memory" in str(exc).lower():
            return GenerationFailed("the device ran out of memory; try a smaller size or n", code="out_of_memory")
        return GenerationFailed(f"generation failed: {type(exc).__name__}")

    def _encode(self, request: GenerationRequest, sampler: str, image, seed: int) -> GeneratedImage:
        extra: dict[str, object] = {}
        if request.mode is not Mode.txt2img:
            extra["Denoising strength"] = request.strength
        if request.mode is Mode.inpaint:
            extra["Mask blur"] = request.mask_blur
        if request.clip_skip:
            extra["Clip skip"] = request.clip_skip
        extra["Version"] = f"pixelmill {__version__}"
        parameters = a1111_parameters(
            prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
            sampler=sampler, cfg_scale=request.guidance, seed=seed, width=image.width,
            height=image.height, model=self._source.name if self._source else "", extra=extra,
        )
        data = encode_image(image, request.output_format, quality=request.output_quality, parameters=parameters)
        return GeneratedImage(
            data=data, media_type=request.output_format.media_type, seed=seed,
            width=image.width, height=image.height,
        )


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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pixelmill import __version__
from pixelmill.core.policy import as_resolved
from pixelmill.core.types import GeneratedImage, GenerationRequest, JobResult, OutputFormat
from pixelmill.engine.generation import prompt_length_groups, run_batch
from pixelmill.engine.preview import PreviewSink, preview_hook
from pixelmill.images.codecs import encode_image, generation_infotext
from pixelmill.engine.models import ModelSource, load_source, resolve_source
from pixelmill.core.errors import GenerationFailed, ModelUnavailable, PixelmillError
from pixelmill.registry.models_dir import ModelKind, ModelRegistry
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
    """Owns the device and the loaded models; runs one generation at a time."""

    def __init__(self, settings: Settings, registry: ModelRegistry):
        from pixelmill.engine.compile import parse_buckets
        from pixelmill.engine.device import select_device
        from pixelmill.engine.model_cache import ModelCache
        from pixelmill.engine.vae import choose_vae

        _quiet_libraries()
        self.settings = settings
        self.registry = registry
        vae = choose_vae(settings.vae, settings.models_dir)
        if vae is not None:
            log.info("VAE %s (%s, fp16-safe: %s)", vae.source, vae.origin, vae.fp16_safe)
        self.device = select_device(
            settings.device,
            offload=settings.offload,
            vae_tiling=settings.vae_tiling,
            vae_slicing=settings.vae_slicing,
            compile=settings.compile,
            lora_max_rank=settings.lora_max_rank,
            precision=settings.precision,
            vae_path=vae.source if vae is not None else None,
            vae_fp16_safe=vae is not None and vae.fp16_safe,
            vae_tile_above_pixels=settings.vae_tile_above_pixels,
            compile_buckets=parse_buckets(settings.compile_buckets),
            cuda_graphs=settings.cuda_graphs,
        )
        # PNG/JPEG/WebP encoders release the GIL: a batch's images encode in parallel.
        self._encoder = ThreadPoolExecutor(max_workers=settings.encode_threads,
                                           thread_name_prefix="pixelmill-encode")
        self._models = ModelCache(int(settings.model_cache_gb * 1e9), self._load_model, self._estimate)
        self._default: ModelSource | None = None  # what requests without a model get
        self._native_size: tuple[int, int] | None = None
        self.demo = False
        self._extras = self._make_extras()

    def _make_extras(self):
        from pixelmill.engine.control import ControlNetCache
        from pixelmill.engine.generation import EngineExtras
        from pixelmill.engine.refiner import RefinerCache

        return EngineExtras(
            controlnets=ControlNetCache(self.registry, self.device, self.settings.controlnet_cache_size),
            refiners=RefinerCache(self.registry, self.device),
        )

    # ------------------------------------------------------------------ loading
    def start(self) -> EngineInfo:
        """Load the default model (falling back to the demo model if none was chosen)."""
        self.registry.refresh()
        if self.settings.model:
            self._set_default(resolve_source(self.settings.model, self.registry))
        else:
            self._load_default_or_demo()
        return self.info

    def _set_default(self, source: ModelSource) -> None:
        model = self._models.get(source)
        self._default = source
        self._native_size = model.pipes.native_size
        self.demo = source.name == DEMO_MODEL

    def _load_default_or_demo(self) -> None:
        try:
            self._set_default(ModelSource(DEFAULT_HUB_MODEL, "hub", DEFAULT_HUB_MODEL))
            return
        except ModelUnavailable as exc:
            from pixelmill.engine.load_errors import fallback_message

            log.warning("%s", fallback_message(DEFAULT_HUB_MODEL, exc.message))
        self._set_default(self._demo_source())

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

    def _load_model(self, source: ModelSource):
        from pixelmill.engine.adapters import LoraCache
        from pixelmill.engine.model_cache import LoadedModel, module_bytes
        from pixelmill.engine.pipelines import PipelineSet

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        from pixelmill.engine.families import TextEncoderOptions

        options = TextEncoderOptions(self.settings.text_encoder_precision, self.settings.text_encoder_quantization)
        pipe = load_source(source, self.device, local_files_only=offline, options=options)
        pipes = PipelineSet(pipe, source.name, self.device)
        if self.device.compile and pipes.family.family == "sdxl":  # compile every bucket now (SDXL's UNet only)
            from pixelmill.engine.compile import default_buckets, warm_up
            from pixelmill.engine.device import begin_graph_step
            from pixelmill.engine.vae import decodes_latents, decode

            buckets = default_buckets(self.device.compile_buckets, pipes.native_size)
            warm_up(pipe, buckets, decode=(lambda p, latents: decode(p, latents, self.device))
                    if decodes_latents(pipe) else None, before_each=lambda: begin_graph_step(self.device))
        loras = LoraCache(pipe, source.name, self.registry, max_count=self.settings.lora_cache_size,
                          max_bytes=int(self.settings.lora_cache_mb * 1e6),
                          hotswap_rank=self.device.lora_max_rank
                          if self.device.lora_hotswap and pipes.family.family == "sdxl" else None)
        log.info("model %s ready on %s (%s)", source.name, self.device.device, self.device.dtype)
        return LoadedModel(source, pipes, loras, module_bytes(pipe),
                           on_close=lambda: self._extras.refiners.release(pipe))

    def _estimate(self, source: ModelSource) -> int:
        """Bytes a model will take once loaded, guessed from its files (0 if unknown)."""
        if source.kind == "hub":
            return 0
        entry = self.registry.find(ModelKind.checkpoint, source.name)
        return entry.size_bytes if entry is not None else 0

    def unload(self) -> None:
        """Free every loaded model's memory (and the ControlNets and refiners)."""
        self._models.close()
        self._extras.controlnets.close()
        self._extras.refiners.close()

    @property
    def loaded_models(self) -> list[str]:
        """Names of the loaded checkpoints, least recently used first."""
        return [source.name for source in self._models.loaded]

    @property
    def info(self) -> EngineInfo:
        if self._default is None or self._native_size is None:
            raise ModelUnavailable("no model is loaded yet")
        return EngineInfo(
            model=self._default.name,
            demo=self.demo,
            device=self.device.device,
            dtype=str(self.device.dtype).removeprefix("torch."),
            native_size=self._native_size,
        )

    def model_for(self, requested: str | None) -> ModelSource:
        """The model a request means: the default one, an alias of it, or a registry name."""
        if self._default is None:
            raise ModelUnavailable("no model is loaded yet")
        if requested in (None, "", self._default.name) or requested in self.settings.model_aliases:
            return self._default
        if requested in self.settings.default_model_names:
            return self._default  # the default model, or the demo it fell back to
        entry = self.registry.resolve(ModelKind.checkpoint, requested, param="model")
        return ModelSource(entry.name, "single_file" if entry.single_file else "folder", str(entry.path))

    def _refresh_for(self, request: GenerationRequest) -> None:
        """Re-scan the models directory once when a request names something not seen yet.

        Workers on other hosts (or an upload through the API) add files after this
        process scanned; a miss re-scans instead of failing.
        """
        wanted = [(ModelKind.lora, lora.name) for lora in request.loras]
        wanted += [(ModelKind.controlnet, control.name) for control in request.controlnets]
        if request.model and request.model != (self._default.name if self._default else None):
            if request.model not in self.settings.model_aliases and request.model not in self.settings.default_model_names:
                wanted.append((ModelKind.checkpoint, request.model))
        if any(self.registry.find(kind, name) is None for kind, name in wanted):
            self.registry.refresh()

    # --------------------------------------------------------------- generation
    def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressCallback | None = None,
        is_canceled: CancelCheck | None = None,
        on_preview: PreviewSink | None = None,
    ) -> JobResult:
        """Generate ``request.n`` images; raises ``GenerationCanceled`` if canceled."""
        return self.generate_batch([request], on_progress=on_progress, is_canceled=is_canceled,
                                   on_preview=on_preview)[0]

    def generate_batch(
        self,
        requests: list[GenerationRequest],
        *,
        on_progress: ProgressCallback | None = None,
        is_canceled: CancelCheck | None = None,
        on_preview: PreviewSink | None = None,
    ) -> list[JobResult]:
        """Generate compatible requests (equal batch keys) in one pipeline call.

        Each result's ``gpu_seconds`` is its share of the call's wall time, by images.
        ``on_preview`` gets a live preview per request every ``preview_steps`` steps
        (none when that setting is 0; see :mod:`pixelmill.engine.preview`).
        Requests run as resolved (:func:`~pixelmill.core.policy.as_resolved`): a stored
        job's as it is, an in-process caller's after the same policy the API applies.
        """
        policy = self.settings.policy()
        requests = [as_resolved(request, policy) for request in requests]
        head = requests[0]
        self._refresh_for(head)
        model = self._models.get(self.model_for(head.model))
        started = time.perf_counter()
        try:
            model.loras.activate(head.loras)
            padded = self._pad_to_bucket(requests, model.pipes)
            outputs = self._run_groups(model.pipes, padded, on_progress, is_canceled, on_preview)[:len(requests)]
        except PixelmillError:
            raise
        except Exception as exc:  # a diffusers/torch failure is a server fault, not the caller's
            log.exception("generation failed")
            raise self._as_failure(exc) from exc
        elapsed = time.perf_counter() - started  # device time: encoding is not in it
        total_images = sum(r.n for r in requests)
        name = model.source.name
        images = [[self._encoder.submit(self._encode, request, name, output.sampler, img, seed)
                   for img, seed in zip(output.images, output.seeds)]
                  for request, output in zip(requests, outputs)]
        controls = [[self._encoder.submit(self._encode_control, img) for img in output.control_images]
                    for output in outputs]
        return [
            JobResult(
                images=[future.result() for future in mine],
                control_images=[future.result() for future in my_controls],
                seed=output.seeds[0], model=name, width=output.width, height=output.height,
                steps=request.steps, sampler=output.sampler, gpu_seconds=elapsed * request.n / total_images,
            )
            for request, output, mine, my_controls in zip(requests, outputs, images, controls)
        ]

    def _pad_to_bucket(self, requests: list[GenerationRequest], pipes) -> list[GenerationRequest]:
        """With ``--compile``, add a throw-away request so the call's batch is a warmed bucket
        (see :mod:`pixelmill.engine.compile`); its images are dropped after the call."""
        family = getattr(getattr(pipes, "family", None), "family", "sdxl")
        if not self.device.compile or family != "sdxl":  # only SDXL's UNet is compiled (warm-up above)
            return requests
        from pixelmill.engine.compile import default_buckets, padding_for
        from pixelmill.engine.generation import target_size

        head, images = requests[0], sum(r.n for r in requests)
        try:
            width, height = target_size(head, pipes.native_size)
        except GenerationFailed:
            return requests
        extra = padding_for(default_buckets(self.device.compile_buckets, pipes.native_size), images, width, height)
        return requests + [head.model_copy(update={"n": extra})] if extra else requests

    def _run_groups(self, pipes, requests, on_progress, is_canceled, on_preview=None) -> list:
        """``run_batch`` per group of equal prompt length, outputs back in request order."""
        sdxl = getattr(pipes, "family", None) is None or pipes.family.family == "sdxl"  # others: no chunking
        groups = prompt_length_groups(pipes.base, requests) if len(requests) > 1 and sdxl else [list(range(len(requests)))]
        outputs: list = [None] * len(requests)
        for group in groups:
            counts = [requests[i].n for i in group]
            hook = preview_hook(self.settings.preview_steps, counts, group, on_preview)
            done = run_batch(pipes, [requests[i] for i in group], on_progress=on_progress,
                             is_canceled=is_canceled, extras=self._extras, preview=hook)
            for index, output in zip(group, done):
                outputs[index] = output
        return outputs

    @staticmethod
    def _as_failure(exc: Exception) -> PixelmillError:
        if "out of memory" in str(exc).lower():
            return GenerationFailed("the device ran out of memory; try a smaller size or n", code="out_of_memory")
        return GenerationFailed(f"generation failed: {type(exc).__name__}")

    def _encode_control(self, image) -> GeneratedImage:
        data = encode_image(image, OutputFormat.png, png_level=self.settings.png_compress_level)
        return GeneratedImage(data=data, media_type=OutputFormat.png.media_type, seed=0,
                              width=image.width, height=image.height)

    def _encode(self, request: GenerationRequest, model: str, sampler: str, image, seed: int) -> GeneratedImage:
        # The resolved request in A1111's conventions: LoRA tags, ControlNet units, refiner, clip skip.
        parameters = generation_infotext(
            request, model=model, sampler=sampler, seed=seed, width=image.width, height=image.height,
            version=f"pixelmill {__version__}",
        )
        data = encode_image(image, request.output_format, quality=request.output_quality, parameters=parameters,
                            png_level=self.settings.png_compress_level)
        return GeneratedImage(
            data=data, media_type=request.output_format.media_type, seed=seed,
            width=image.width, height=image.height,
        )


"""Device, dtype and memory/speed options, chosen in one place and applied to pipelines.

``select_device`` turns a preference ("auto", "cpu", "cuda:1", "mps") into a frozen
:class:`DeviceConfig`; ``prepare_pipeline`` applies it to a freshly loaded pipeline
(placement or CPU offload, SDPA attention, channels-last, VAE tiling/slicing, the
fp16-safe VAE, ``torch.compile``; warm-up and buckets: :mod:`pixelmill.engine.compile`).
``nan_guard`` refuses black/NaN images, the visible
symptom of fp16 overflow.

Precision choices:

* CUDA: fp16 (``--precision bf16`` on Ampere and newer: bf16). SDXL's UNet and text
  encoders are fine in fp16; its VAE overflows in fp16, so it decodes in bf16 where the
  GPU has it, in fp16 when the VAE is fp16-safe, else in fp32 (see
  :mod:`pixelmill.engine.vae`, which also picks the VAE).
* MPS: fp16 as well. fp32 SDXL needs ~14 GB of unified memory and is roughly twice as
  slow; fp16 with the same VAE upcast is what diffusers' Apple guide uses, and
  ``nan_guard`` catches the rare black output instead of returning it silently.
* CPU: fp32, because fp16 matmuls on CPU are slow or unsupported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pixelmill.core.errors import GenerationFailed, ModelUnavailable

log = logging.getLogger(__name__)

Offload = Literal["none", "model", "sequential"]

# Without --cuda-graphs: autotuned kernels, no graphs. A CUDA graph keeps one static buffer
# set per shape it records (memory per bucket), so it is opt-in, for servers whose shapes
# are listed in --compile-buckets; LoRA hot-swap copies weights in place (same addresses),
# which graphs need.
COMPILE_MODE = "max-autotune-no-cudagraphs"
CUDA_GRAPHS_MODE = "max-autotune"


@dataclass(frozen=True)
class DeviceConfig:
    """Where and how pipelines run. Built by :func:`select_device`, never mutated."""

    device: str
    dtype: torch.dtype
    offload: Offload = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    compile: bool = False
    vae_path: Path | str | None = None
    """Optional diffusers ``AutoencoderKL`` folder or hub id replacing every SDXL model's
    VAE (see :func:`pixelmill.engine.vae.choose_vae`)."""
    vae_fp16_safe: bool = False
    """The configured VAE does not overflow in fp16 (e.g. sdxl-vae-fp16-fix): no upcast."""
    bf16: bool = False
    """The device computes bf16 natively (CUDA compute capability 8.0 and newer)."""
    vae_tile_above_pixels: int = 1536 * 1536
    """Tile the VAE decode above this many pixels per image, slice above it per batch."""
    compile_buckets: tuple[tuple[int, int, int], ...] = ()
    """``(batch, width, height)`` shapes compiled at start (see :mod:`pixelmill.engine.compile`)."""
    lora_max_rank: int = 128
    """Rank of the LoRA hot-swap slots of a compiled UNet (see :attr:`lora_hotswap`)."""
    cuda_graphs: bool = False
    """With ``compile`` on CUDA: replay the compiled UNet and VAE decoder as CUDA graphs."""
    _compile_backend: str | None = field(default=None, repr=False)
    """Tests only: a ``torch.compile`` backend such as ``"eager"`` (dynamo tracing without
    inductor, cheap on CPU). ``None``, the production value, compiles with ``COMPILE_MODE``."""

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def compile_mode(self) -> str:
        """The ``torch.compile`` mode: with CUDA graphs only where they apply (CUDA)."""
        return CUDA_GRAPHS_MODE if self.cuda_graphs and self.is_cuda else COMPILE_MODE

    @property
    def half(self) -> bool:
        return self.dtype in (torch.float16, torch.bfloat16)

    @property
    def vae_dtype(self) -> torch.dtype:
        """The dtype SDXL VAEs are kept and decode in (see :func:`pixelmill.engine.vae.decode_dtype`)."""
        from pixelmill.engine.vae import decode_dtype

        return decode_dtype(self.dtype, fp16_safe=self.vae_fp16_safe, bf16=self.bf16)

    @property
    def lora_hotswap(self) -> bool:
        """LoRAs are hot-swapped into fixed UNet slots (whenever the UNet is compiled), so
        switching them changes no module and no guard and never triggers a recompile."""
        return self.compile and self.offload != "sequential"


def select_device(
    preference: str = "auto",
    *,
    offload: Offload = "none",
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    compile: bool = False,
    vae_path: Path | str | None = None,
    lora_max_rank: int = 128,
    precision: str = "auto",
    vae_fp16_safe: bool = False,
    vae_tile_above_pixels: int = 1536 * 1536,
    compile_buckets: tuple[tuple[int, int, int], ...] = (),
    cuda_graphs: bool = False,
) -> DeviceConfig:
    """Resolve a device preference into a :class:`DeviceConfig`.

    ``auto`` picks CUDA, then MPS, then CPU. An explicit device that is not available
    raises :class:`~pixelmill.core.errors.ModelUnavailable`, as does ``precision="bf16"``
    on a GPU without bf16, and ``cuda_graphs`` without ``compile`` or with offload (hooks
    move weights between calls; a graph replays fixed addresses).
    """
    device = _resolve_device(preference.strip().lower())
    bf16 = device.startswith("cuda") and _bf16_capable(device)
    dtype = pick_dtype(device, precision, bf16=bf16)
    if offload not in ("none", "model", "sequential"):
        raise ModelUnavailable(f"unknown offload mode {offload!r}; use none, model or sequential")
    if cuda_graphs:
        _check_cuda_graphs(device, compile=compile, offload=offload)
    return DeviceConfig(device=device, dtype=dtype, offload=offload, vae_tiling=vae_tiling,
                        vae_slicing=vae_slicing, compile=compile, vae_path=vae_path,
                        lora_max_rank=lora_max_rank, vae_fp16_safe=vae_fp16_safe, bf16=bf16,
                        vae_tile_above_pixels=vae_tile_above_pixels, compile_buckets=compile_buckets,
                        cuda_graphs=cuda_graphs)


def _check_cuda_graphs(device: str, *, compile: bool, offload: str) -> None:
    if not compile:
        raise ModelUnavailable("cuda_graphs: CUDA graphs replay compiled kernels; turn on --compile too")
    if offload != "none":
        raise ModelUnavailable(f"cuda_graphs: not with --offload {offload} (offload moves weights between "
                               "calls; a CUDA graph replays fixed addresses); use one or the other")
    if not device.startswith("cuda"):
        log.warning("cuda_graphs: no effect on %s (CUDA only); compiling without graphs", device)


def pick_dtype(device: str, precision: str, *, bf16: bool) -> torch.dtype:
    """The pipelines' dtype: fp32 on CPU, fp16 on MPS, on CUDA fp16 or (asked for) bf16."""
    if precision not in ("auto", "fp16", "bf16"):
        raise ModelUnavailable(f"unknown precision {precision!r}; use auto, fp16 or bf16")
    if device == "cpu":
        return torch.float32
    if precision == "bf16":
        if not bf16:
            raise ModelUnavailable(f"--precision bf16 needs a GPU with bf16 (compute capability "
                                   f"8.0 or newer); {device} has none: use fp16")
        return torch.bfloat16
    return torch.float16


def _bf16_capable(device: str) -> bool:
    from pixelmill.engine.vae import bf16_capable

    index = int(device.partition(":")[2] or torch.cuda.current_device())
    return bf16_capable(torch.cuda.get_device_capability(index))


def _resolve_device(pref: str) -> str:
    if pref == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if pref == "cpu":
        return "cpu"
    if pref == "mps":
        if not _mps_available():
            raise ModelUnavailable("device 'mps' requested but Apple Metal (MPS) is not available")
        return "mps"
    if pref == "cuda" or pref.startswith("cuda:"):
        return _check_cuda(pref)
    raise ModelUnavailable(f"unknown device {pref!r}; use auto, cpu, cuda, cuda:N or mps")


def _check_cuda(pref: str) -> str:
    if not torch.cuda.is_available():
        raise ModelUnavailable(f"device {pref!r} requested but CUDA is not available "
                               "(no GPU, or torch was installed without CUDA)")
    index = pref.partition(":")[2]
    if index:
        if not index.isdigit():
            raise ModelUnavailable(f"bad CUDA device {pref!r}; use cuda:N")
        if int(index) >= torch.cuda.device_count():
            raise ModelUnavailable(f"device {pref!r} requested but only "
                                   f"{torch.cuda.device_count()} CUDA device(s) exist")
    return pref


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


# --- applying a config to a pipeline -----------------------------------------------------


def prepare_pipeline(pipe: Any, cfg: DeviceConfig) -> Any:
    """Apply ``cfg`` to a freshly loaded pipeline and return it (modified in place).

    The pipeline should already have been loaded with ``dtype=cfg.dtype``; it is
    cast anyway so that callers cannot get this wrong.
    """
    _quiet_empty_fp32_warning()
    unet = getattr(pipe, "unet", None) is not None  # SDXL; FLUX/SD3 have a transformer (model families)
    if cfg.vae_path is not None and unet and _decodes_latents(pipe):
        _swap_vae(pipe, cfg)
    _use_sdpa(pipe)
    cache_attention_signatures()
    _configure_vae(pipe, cfg)
    apply_placement(pipe, cfg)
    if cfg.is_cuda:
        from pixelmill.engine.compile import configure_cuda_backends

        configure_cuda_backends()
    if cfg.is_cuda and cfg.offload == "none" and unet:
        # NHWC convolutions use tensor cores better on CUDA; no benefit on CPU/MPS.
        pipe.unet.to(memory_format=torch.channels_last)
        _fuse_qkv(pipe)
    if cfg.lora_hotswap and hasattr(pipe, "enable_lora_hotswap"):
        # Must precede compiling: it declares the rank every hot-swapped LoRA is padded to
        # (see pixelmill.engine.hotswap, which builds the slots and consumes this setting).
        pipe.enable_lora_hotswap(target_rank=cfg.lora_max_rank)
    if cfg.compile and unet:
        _compile_unet(pipe, cfg)
    return pipe


def _fuse_qkv(pipe: Any) -> None:
    """One matmul instead of three per attention block (CUDA: fewer, larger kernels).

    Skipped where the installed diffusers does not offer it. A LoRA's q/k/v parts run only
    under the unfused processors: the adapter cache switches between the two per batch
    (:class:`pixelmill.engine.adapters.QkvFusion`).
    """
    fuse = getattr(pipe, "fuse_qkv_projections", None)
    if fuse is None:
        return
    try:
        fuse()
    except Exception as exc:  # an architecture diffusers cannot fuse: run unfused
        log.warning("could not fuse QKV projections: %s", exc)


def apply_placement(pipe: Any, cfg: DeviceConfig) -> None:
    """Move ``pipe`` to the device, or install CPU-offload hooks (CUDA only).

    Also used for pipelines derived with ``from_pipe``: offload hooks belong to one
    pipeline's model sequence, so each derived pipeline must install its own.
    """
    if cfg.offload != "none" and not cfg.is_cuda:
        log.warning("offload=%s needs CUDA; ignored on %s", cfg.offload, cfg.device)
    if _needs_cast(pipe, cfg.dtype):
        # Only when needed: diffusers warns on every dtype-carrying .to() call.
        pipe.to(dtype=cfg.dtype)
    if _decodes_latents(pipe) and pipe.vae.dtype != cfg.vae_dtype:
        pipe.vae.to(dtype=cfg.vae_dtype)  # the VAE rests in its decode dtype (engine/vae.py)
    if cfg.offload == "none" or not cfg.is_cuda:
        pipe.to(cfg.device)
        return
    # Offload: weights stay on CPU; accelerate hooks move them on demand.
    if cfg.offload == "model":
        pipe.enable_model_cpu_offload(device=cfg.device)
    else:
        pipe.enable_sequential_cpu_offload(device=cfg.device)


class _EmptyFp32ListFilter(logging.Filter):
    """Drop diffusers' "modules ... kept in float32: []" warning (empty list = nothing to say).

    diffusers 0.42 logs it on every dtype-carrying ``.to()``, which ``from_pipe`` and
    the img2img/inpaint VAE upcast do on each call, flooding server logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


def _quiet_empty_fp32_warning() -> None:
    target = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _EmptyFp32ListFilter) for f in target.filters):
        target.addFilter(_EmptyFp32ListFilter())


def _decodes_latents(pipe: Any) -> bool:
    from pixelmill.engine.vae import decodes_latents

    return decodes_latents(pipe)


def _needs_cast(pipe: Any, dtype: torch.dtype) -> bool:
    skip = "vae" if _decodes_latents(pipe) else None  # kept in its own decode dtype
    modules = [c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module) and name != skip]
    return any(p.dtype != dtype for m in modules for p in m.parameters() if p.is_floating_point())


def _swap_vae(pipe: Any, cfg: DeviceConfig) -> None:
    from pixelmill.engine.vae import VaeChoice, load_vae

    choice = VaeChoice(str(cfg.vae_path), cfg.vae_fp16_safe, "setting")
    pipe.vae = load_vae(choice, cfg.vae_dtype)  # DiffusionPipeline.__setattr__ also updates the config


def _use_sdpa(pipe: Any) -> None:
    """Force PyTorch's fused scaled-dot-product attention on the UNet and VAE.

    It is diffusers' default on torch 2, but a checkpoint's saved processors (or an
    earlier ``set_attn_processor``) could have replaced it; setting it is cheap.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    for name in ("unet", "vae"):
        model = getattr(pipe, name, None)
        if model is not None and hasattr(model, "set_attn_processor"):
            model.set_attn_processor(AttnProcessor2_0())


def cache_attention_signatures() -> None:
    """Compute each diffusers attention processor's call signature once, not per call.

    diffusers' ``Attention.forward`` asks ``inspect.signature(processor.__call__)`` on
    every call, to warn about unused keyword arguments: about 2,000 times per image on
    SDXL, a few percent of a small model's generation time on CPU (and host time that
    a GPU waits for). A function's ``__signature__`` is what ``inspect`` returns when
    set, and a class's ``__call__`` never changes, so storing it changes nothing else.
    Idempotent; covers processors set later (fused QKV, ControlNet, refiner).
    """
    import inspect

    from diffusers.models import attention_processor

    for value in vars(attention_processor).values():
        call = getattr(value, "__call__", None) if isinstance(value, type) else None
        if inspect.isfunction(call) and getattr(call, "__signature__", None) is None:
            call.__signature__ = inspect.signature(call)


def _configure_vae(pipe: Any, cfg: DeviceConfig) -> None:
    vae = pipe.vae
    if cfg.vae_tiling:
        vae.enable_tiling()
    if cfg.vae_slicing:
        vae.enable_slicing()
    if _decodes_latents(pipe):
        # pixelmill decodes SDXL latents itself, also tiling/slicing by size per call
        # (engine/vae.py); the VAE rests in its decode dtype, with no per-call casts.
        from pixelmill.engine.vae import set_decode_dtype

        set_decode_dtype(vae, cfg.vae_dtype, fp16_safe=cfg.vae_fp16_safe and cfg.vae_path is not None)
        return
    if cfg.dtype == torch.float16 and not getattr(vae.config, "force_upcast", True):
        # Pipelines that decode by themselves (other families) keep diffusers' own fp32
        # upcast of an fp16 VAE: overflow shows as black/NaN images.
        vae.register_to_config(force_upcast=True)


def _compile_unet(pipe: Any, cfg: DeviceConfig) -> None:
    if cfg.offload == "sequential":
        log.warning("compile is not compatible with sequential offload; not compiling")
        return
    # Module.compile() compiles in place and keeps the UNet2DConditionModel type, so
    # from_pipe type checks and load_lora_weights keep working on the compiled UNet.
    from pixelmill.engine.compile import configure_dynamo, configure_inductor, log_recompiles
    from pixelmill.engine.vae import compile_decoder

    log_recompiles()
    configure_dynamo()
    if cfg._compile_backend is not None:  # tests: trace with dynamo, skip inductor
        pipe.unet.compile(backend=cfg._compile_backend, fullgraph=False)
        if _decodes_latents(pipe):
            compile_decoder(pipe.vae, mode=cfg.compile_mode, backend=cfg._compile_backend)
        return
    configure_inductor()
    # dynamic=False: every shape is a bucket warmed at start (engine/compile.py), so a
    # static graph per bucket beats one symbolic graph, and no request meets a new shape.
    pipe.unet.compile(mode=cfg.compile_mode, fullgraph=False, dynamic=False)
    if _decodes_latents(pipe):
        compile_decoder(pipe.vae, mode=cfg.compile_mode)


def begin_graph_step(cfg: DeviceConfig) -> None:
    """Tell CUDA graph trees a new generation starts: the previous call's graph outputs
    (already copied out) may be overwritten. No-op without CUDA graphs."""
    if cfg.compile and cfg.compile_mode == CUDA_GRAPHS_MODE:
        torch.compiler.cudagraph_mark_step_begin()


# --- output checks ----------------------------------------------------------------------


def nan_guard(images: Any) -> None:
    """Raise :class:`GenerationFailed` if decoded images contain NaN/inf or are all black.

    Accepts a numpy array, a torch tensor or a list of PIL images (anything
    ``np.asarray`` understands per image). fp16 overflow shows up as NaN in float output
    and as all-zero pixels once converted to 8-bit; either way we never return it.
    """
    for index, image in enumerate(_as_arrays(images)):
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise GenerationFailed(f"image {index} contains NaN/inf values (numeric overflow; "
                                   "an fp16-fix VAE or fp32 may be needed)")
        if image.size and float(np.abs(image).max()) == 0.0:
            raise GenerationFailed(f"image {index} is entirely black (likely numeric overflow)")


def _as_arrays(images: Any) -> list[np.ndarray]:
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    if isinstance(images, np.ndarray):
        return [images] if images.ndim <= 3 else list(images)
    return [np.asarray(image) for image in images]

"""Model families (SDXL, FLUX.1, SD 3.5) and what each can do, framework-free.

A :class:`ModelFamily` is the request policy's view of a model: which request parameters
its pipelines honour. :func:`check_family` refuses a request that asks a family for
something it cannot do (400 naming the parameter) instead of silently ignoring it. The
family itself is detected from the model's files by :mod:`pixelmill.registry.families`
(never from its name); the engine checks again after loading, so a job stored by an API
host that could not see the model files is still refused rather than run wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pixelmill.core.errors import InvalidRequest
from pixelmill.core.types import GenerationRequest, Mode

SDXL, FLUX, SD3 = "sdxl", "flux", "sd3"
FAMILIES = (SDXL, FLUX, SD3)
FAMILY_LABELS = {SDXL: "SDXL", FLUX: "FLUX.1", SD3: "Stable Diffusion 3.5"}


@dataclass(frozen=True)
class ModelFamily:
    """A family (and variant) with its capabilities.

    ``guidance``: the model takes a guidance value (CFG for SDXL/SD3, the distilled
    guidance embedding for FLUX.1-dev); FLUX.1-schnell takes none. ``schedulers``: the
    pixelmill sampler names its noise schedule accepts (None: all of them).
    """

    family: str
    variant: str | None = None
    negative_prompt: bool = True
    guidance: bool = True
    clip_skip: bool = True
    refiner: bool = False
    controlnet: bool = False
    controlnet_modes: frozenset[Mode] = frozenset(Mode)
    """Modes a ControlNet works with (diffusers' ControlNet pipelines of the family)."""
    img2img: bool = True
    inpaint: bool = True
    lora: bool = True
    schedulers: frozenset[str] | None = None

    @property
    def label(self) -> str:
        """``FLUX.1 (schnell)``-style name for messages."""
        base = FAMILY_LABELS.get(self.family, self.family)
        return f"{base} ({self.variant})" if self.variant else base

    @property
    def key(self) -> str:
        """``family`` or ``family/variant``: what batch keys and profiles read."""
        return f"{self.family}/{self.variant}" if self.variant else self.family


_BASE = {
    SDXL: ModelFamily(SDXL, refiner=True, controlnet=True),
    # FLUX.1 has no CFG branch (a negative prompt would need true_cfg, doubling the cost) and its
    # CLIP gives only the pooled vector, so clip_skip has no meaning; flow matching only.
    # "euler" is accepted and means the model's own flow-matching Euler (what A1111 clients send).
    FLUX: ModelFamily(FLUX, negative_prompt=False, clip_skip=False, schedulers=frozenset({"euler"}), controlnet=True),
    SD3: ModelFamily(SD3, schedulers=frozenset({"euler"}), controlnet=True, controlnet_modes=frozenset({Mode.txt2img})),
}


def family_for(family: str, variant: str | None = None) -> ModelFamily:
    """The descriptor of ``family`` (one of :data:`FAMILIES`) and ``variant``."""
    base = _BASE.get(family)
    if base is None:
        raise ValueError(f"unknown model family {family!r}")
    if family == FLUX and variant == "schnell":
        return replace(base, variant=variant, guidance=False)  # timestep-distilled: no guidance input
    return replace(base, variant=variant)


def check_family(request: GenerationRequest, family: ModelFamily, *, guidance_given: bool = True) -> None:
    """Refuse what ``family`` cannot do, naming the parameter (``InvalidRequest``).

    ``guidance_given``: whether the client sent a guidance value (a resolved request always
    has one; the policy fills a family's profile default, 0 for FLUX.1-schnell).
    """
    name = family.label

    def refuse(param: str, what: str) -> None:
        raise InvalidRequest(f"{name} models do not support {what}", param=param)

    if request.negative_prompt and not family.negative_prompt:
        refuse("negative_prompt", "a negative prompt")
    if guidance_given and request.guidance and not family.guidance:
        refuse("guidance", "guidance (CFG): leave it unset or 0")
    if request.clip_skip is not None and not family.clip_skip:
        refuse("clip_skip", "clip_skip")
    if request.refiner is not None and not family.refiner:
        refuse("refiner", "an SDXL refiner pass")
    if request.controlnets and not family.controlnet:
        refuse("controlnets", "ControlNets in pixelmill yet")
    if request.controlnets and request.mode not in family.controlnet_modes:
        refuse("controlnets", f"ControlNets with {request.mode.value} (diffusers has no such pipeline)")
    if request.mode is Mode.img2img and not family.img2img:
        refuse("init_image", "img2img")
    if request.mode is Mode.inpaint and not family.inpaint:
        refuse("mask_image", "inpainting")
    if request.loras and not family.lora:
        refuse("loras", "LoRAs")
    if request.scheduler and family.schedulers is not None and request.scheduler not in family.schedulers:
        refuse("scheduler", f"the scheduler {request.scheduler!r}: they sample with their own flow-matching "
                            "Euler scheduler (leave scheduler unset or send euler)")

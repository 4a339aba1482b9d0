"""Sampler (scheduler) names: canonical ids, A1111 labels and loose spellings.

Requests name a scheduler loosely ("DPM++ 2M Karras", "dpm++_2m_karras", "euler-a", or the
names of Replicate's SDXL model: "KarrasDPM", "K_EULER_ANCESTRAL", "DPMSolverMultistep");
:func:`canonical_scheduler` maps that to one canonical id such as ``dpmpp_2m_karras`` and
:func:`sampler_label` gives the A1111 label written into PNG metadata. Pure name work: the
engine (``pixelmill.engine.schedulers``) builds the diffusers scheduler for a canonical id.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pixelmill.core.errors import InvalidRequest

# Other noise-schedule switches a model's default config may have turned on; they are
# mutually exclusive with Karras sigmas, so every variant states all of them.
_PLAIN_SIGMAS = {"use_karras_sigmas": False, "use_exponential_sigmas": False,
                 "use_beta_sigmas": False}
_KARRAS = {**_PLAIN_SIGMAS, "use_karras_sigmas": True}
_EXPONENTIAL = {**_PLAIN_SIGMAS, "use_exponential_sigmas": True}


@dataclass(frozen=True)
class SchedulerSpec:
    """One canonical scheduler: diffusers class, config overrides, A1111 label, aliases."""

    name: str
    class_name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    requires: str | None = None  # optional Python package the diffusers class imports


_SPECS = (
    SchedulerSpec("euler", "EulerDiscreteScheduler", "Euler", _PLAIN_SIGMAS, ("k_euler",)),
    SchedulerSpec("euler_a", "EulerAncestralDiscreteScheduler", "Euler a", {},
                  ("euler_ancestral", "k_euler_a", "k_euler_ancestral", "eulera")),
    SchedulerSpec("dpmpp_2m", "DPMSolverMultistepScheduler", "DPM++ 2M",
                  {**_PLAIN_SIGMAS, "algorithm_type": "dpmsolver++", "solver_order": 2},
                  ("k_dpmpp_2m", "DPMSolverMultistep")),
    SchedulerSpec("dpmpp_2m_karras", "DPMSolverMultistepScheduler", "DPM++ 2M Karras",
                  {**_KARRAS, "algorithm_type": "dpmsolver++", "solver_order": 2},
                  ("k_dpmpp_2m_karras", "KarrasDPM")),
    SchedulerSpec("dpmpp_2m_sde_karras", "DPMSolverMultistepScheduler", "DPM++ 2M SDE Karras",
                  {**_KARRAS, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                  ("k_dpmpp_2m_sde_karras",)),
    # A1111 >= 1.9 runs "DPM++ 2M SDE" with the exponential schedule unless told otherwise.
    SchedulerSpec("dpmpp_2m_sde_exponential", "DPMSolverMultistepScheduler", "DPM++ 2M SDE Exponential",
                  {**_EXPONENTIAL, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                  ("k_dpmpp_2m_sde_exponential",)),
    SchedulerSpec("dpmpp_2m_sde", "DPMSolverMultistepScheduler", "DPM++ 2M SDE",
                  {**_PLAIN_SIGMAS, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                  ("k_dpmpp_2m_sde",)),
    SchedulerSpec("euler_karras", "EulerDiscreteScheduler", "Euler Karras", _KARRAS, ("k_euler_karras",)),
    SchedulerSpec("dpmpp_sde_karras", "DPMSolverSDEScheduler", "DPM++ SDE Karras",
                  {**_KARRAS}, ("k_dpmpp_sde_karras",), requires="torchsde"),
    SchedulerSpec("ddim", "DDIMScheduler", "DDIM"),
    SchedulerSpec("unipc", "UniPCMultistepScheduler", "UniPC", _PLAIN_SIGMAS, ("uni_pc",)),
    SchedulerSpec("lcm", "LCMScheduler", "LCM"),
    # Few-step models (SDXL-Turbo, SDXL-Lightning) are sampled with "trailing" timestep
    # spacing: the first step starts at the last training timestep (pure noise).
    SchedulerSpec("euler_trailing", "EulerDiscreteScheduler", "Euler SGM Uniform",
                  {**_PLAIN_SIGMAS, "timestep_spacing": "trailing"}),
    SchedulerSpec("euler_a_trailing", "EulerAncestralDiscreteScheduler", "Euler a SGM Uniform",
                  {"timestep_spacing": "trailing"}),
    SchedulerSpec("heun", "HeunDiscreteScheduler", "Heun", _PLAIN_SIGMAS, ("k_heun", "HeunDiscrete")),
    SchedulerSpec("lms", "LMSDiscreteScheduler", "LMS", _PLAIN_SIGMAS, ("k_lms",),
                  requires="scipy"),
    SchedulerSpec("pndm", "PNDMScheduler", "PLMS", {"skip_prk_steps": True}, ("plms",)),
)

SCHEDULERS: dict[str, SchedulerSpec] = {spec.name: spec for spec in _SPECS}
"""Canonical name -> spec, in display order."""


def _normalise(name: str) -> str:
    """Fold spelling variants: case, ``++``/``+`` -> ``pp``/``p``, separators -> ``_``."""
    text = name.strip().lower().replace("++", "pp").replace("+", "p")
    return re.sub(r"[\s\-_.]+", "_", text).strip("_")


def _build_aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for spec in _SPECS:
        for alias in (spec.name, spec.label, *spec.aliases):
            table[_normalise(alias)] = spec.name
    return table


_ALIASES = _build_aliases()


def available_schedulers() -> list[str]:
    """Canonical names whose optional dependencies are installed."""
    return [s.name for s in _SPECS if s.requires is None or _installed(s.requires)]


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def canonical_scheduler(name: str) -> str:
    """Map a canonical name, A1111 label or loose spelling to the canonical name.

    Raises :class:`InvalidRequest` (``param="scheduler"``) for unknown names and for
    schedulers whose optional package is not installed on this server.
    """
    canonical = _ALIASES.get(_normalise(name or ""))
    if canonical is None:
        raise InvalidRequest(
            f"unknown scheduler {name!r}; valid: {', '.join(available_schedulers())}",
            param="scheduler")
    requires = SCHEDULERS[canonical].requires
    if requires and not _installed(requires):
        raise InvalidRequest(
            f"scheduler {canonical!r} needs the {requires!r} package, which is not installed "
            f"on this server; valid: {', '.join(available_schedulers())}", param="scheduler")
    return canonical


_CLASS_LABELS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DPMSolverSDEScheduler": "DPM++ SDE",
    "DDIMScheduler": "DDIM",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
    "HeunDiscreteScheduler": "Heun",
    "LMSDiscreteScheduler": "LMS",
    "PNDMScheduler": "PLMS",
}


def sampler_label(name: str | None, default_scheduler_class_name: str | Mapping[str, Any], *,
                  karras: bool = False) -> str:
    """A1111 sampler label for PNG metadata, e.g. ``"DPM++ 2M Karras"``.

    ``name=None`` labels the model's default scheduler from its class name; pass
    ``karras=True`` when that default config uses Karras sigmas. The default may also be
    given as the scheduler config itself (its ``_class_name`` and ``use_karras_sigmas``).
    """
    if name is not None:
        return SCHEDULERS[canonical_scheduler(name)].label
    if isinstance(default_scheduler_class_name, Mapping):
        config = default_scheduler_class_name
        default_scheduler_class_name = config.get("_class_name", "")
        karras = karras or bool(config.get("use_karras_sigmas"))
    label = _CLASS_LABELS.get(default_scheduler_class_name, default_scheduler_class_name)
    return f"{label} Karras" if karras and label in _CLASS_LABELS.values() else label

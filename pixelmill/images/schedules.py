"""The sampler and schedule type an infotext names, as AUTOMATIC1111 >= 1.9 writes them.

pixelmill labels what ran with one pre-1.9 A1111 name (``DPM++ 2M Karras``, see
:func:`pixelmill.core.samplers.sampler_label`). A1111 1.9 and later name the sampler and
the schedule type apart (``Sampler: DPM++ 2M, Schedule type: Karras``): the infotext's
``Schedule type`` is the request's schedule, replaced by the one that ran when a schedule
function made the sigmas (``modules/processing.py`` ``create_infotext`` and
``modules/sd_samplers_kdiffusion.py`` ``get_sigmas``). Name work only.
"""

from __future__ import annotations

from pixelmill.core.errors import InvalidRequest
from pixelmill.core.samplers import SCHEDULERS, canonical_scheduler

AUTOMATIC = "Automatic"
"""A1111's schedule type for "the sampler's own sigmas" (``sd_schedulers.schedulers[0]``)."""

UNIFORM = "Uniform"
"""A1111's schedule type for the model's own sigma spacing, chosen by name."""

# Schedule types a pixelmill label can end with (A1111 ``sd_schedulers`` labels).
_SUFFIXES = ("Karras", "Exponential")

# A1111 samplers whose "Automatic" is a schedule function of their own (``options["scheduler"]``
# in sd_samplers_kdiffusion.py), so A1111 writes that schedule; run on the model's own sigmas
# they ran "Uniform". The other samplers' Automatic is their own sigmas. Samplers pixelmill runs only.
_OWN_SCHEDULE = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential"}

_LABELS = frozenset(spec.label for spec in SCHEDULERS.values())


def split_sampler_label(label: str | None) -> tuple[str, str]:
    """``"DPM++ 2M Karras"`` → ``("DPM++ 2M", "Karras")``: the infotext's Sampler and Schedule type.

    A plain label is the sampler on its own sigmas: ``Automatic``, or ``Uniform`` for a
    sampler whose Automatic would have been another schedule (``DPM++ 2M``). A pixelmill
    scheduler id (``euler_a``, what a backend may report) is read as its label; any other
    name (a model's own scheduler class) comes back as it is, with ``Automatic``.
    """
    if not label:
        return "", AUTOMATIC
    if label not in _LABELS:
        try:
            label = SCHEDULERS[canonical_scheduler(label)].label
        except InvalidRequest:
            return label, AUTOMATIC
    for suffix in _SUFFIXES:
        if label.endswith(" " + suffix):
            return label[: -len(suffix) - 1], suffix
    return label, UNIFORM if label in _OWN_SCHEDULE else AUTOMATIC

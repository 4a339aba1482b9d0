"""Fresh diffusers schedulers per call, built from a canonical sampler name.

:func:`make_scheduler` builds the diffusers scheduler from the model's own scheduler
config (so its noise schedule is kept); names are resolved by
:mod:`pixelmill.core.samplers`.

Schedulers are stateful (step index, multistep history), so one instance must never
serve two generations. The engine uses :func:`use_scheduler`, which swaps a *fresh*
scheduler into the pipeline for one call and restores the model's default afterwards.
That is safe because the engine runs one generation per pipeline set at a time under
its lock; the alternative (``from_pipe`` per call) rebuilds a pipeline object per
request for no benefit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pixelmill.core.samplers import SCHEDULERS, canonical_scheduler


def make_scheduler(name: str | None, base_config: Any):
    """Build a new scheduler ``name`` from a model's scheduler config (``pipe.scheduler.config``).

    The model's noise schedule (betas, timestep spacing, prediction type) is kept; only
    the sampler family and its sigma schedule change. ``name=None`` builds a fresh
    instance of the model's default scheduler (the class named in ``_class_name``).
    """
    import diffusers

    if name is None:
        return getattr(diffusers, base_config["_class_name"]).from_config(dict(base_config))
    spec = SCHEDULERS[canonical_scheduler(name)]
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(dict(base_config), **spec.overrides)


def fresh_default(scheduler: Any):
    """A new, unused instance of the same class and config as ``scheduler``."""
    return type(scheduler).from_config(scheduler.config)


@contextmanager
def use_scheduler(pipe: Any, name: str | None) -> Iterator[Any]:
    """Give ``pipe`` a fresh scheduler for one call, restoring its default afterwards.

    ``name=None`` means the model's default scheduler (still a fresh instance). The
    caller must hold the engine lock for this pipeline for the duration.
    """
    default = pipe.scheduler
    if name is None:
        pipe.scheduler = fresh_default(default)
    else:
        pipe.scheduler = make_scheduler(name, default.config)
    try:
        yield pipe.scheduler
    finally:
        pipe.scheduler = default

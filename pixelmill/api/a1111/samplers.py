"""A1111 sampler and schedule-type names, resolved the way A1111 >= 1.9 resolves them.

A1111 names a sampler (``DPM++ 2M``) and, since 1.9, a schedule type (``Karras``) apart;
older clients send both in one name (``DPM++ 2M Karras``). :func:`resolve_sampler` turns
that pair into one of pixelmill's canonical scheduler ids (:mod:`pixelmill.core.samplers`)
(the way back, a label a job ran with to the pair for ``info``, is the infotext's:
:func:`pixelmill.images.schedules.split_sampler_label`). Name work only: which schedulers exist and what they do is the core's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixelmill.core.errors import InvalidRequest, NotFound
from pixelmill.core.samplers import available_schedulers


@dataclass(frozen=True)
class Schedule:
    """One A1111 schedule type (``modules/sd_schedulers.py``)."""

    name: str
    label: str
    aliases: tuple[str, ...] = ()
    default_rho: float = -1
    need_inner_model: bool = False


SCHEDULES: tuple[Schedule, ...] = (
    Schedule("automatic", "Automatic"),
    Schedule("uniform", "Uniform", need_inner_model=True),
    Schedule("karras", "Karras", default_rho=7.0),
    Schedule("exponential", "Exponential"),
    Schedule("polyexponential", "Polyexponential", default_rho=1.0),
    Schedule("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True),
    Schedule("kl_optimal", "KL Optimal"),
    Schedule("align_your_steps", "Align Your Steps"),
    Schedule("simple", "Simple"),
    Schedule("normal", "Normal"),
    Schedule("ddim", "DDIM"),
    Schedule("beta", "Beta"),
)
"""Every schedule type A1111 knows, in its order (so a client's menu looks the same)."""

AUTOMATIC = SCHEDULES[0]


@dataclass(frozen=True)
class Sampler:
    """One A1111 sampler and the pixelmill scheduler each schedule type runs as.

    ``default`` is the schedule ``Automatic`` means for this sampler (A1111's
    ``options["scheduler"]``; None: the sampler's own sigmas, which pixelmill calls
    ``uniform``). ``runs`` maps a schedule name to a canonical pixelmill scheduler id.
    """

    name: str
    aliases: tuple[str, ...]
    runs: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    def schedule_for(self, schedule: Schedule) -> str:
        """The schedule name ``schedule`` means for this sampler (``automatic`` resolved)."""
        if schedule is AUTOMATIC:
            return self.default or "uniform"
        return schedule.name


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), {"karras": "dpmpp_2m_karras", "uniform": "dpmpp_2m"}, "karras"),
    Sampler("DPM++ SDE", ("k_dpmpp_sde",), {"karras": "dpmpp_sde_karras"}, "karras"),
    Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",),
            {"exponential": "dpmpp_2m_sde_exponential", "karras": "dpmpp_2m_sde_karras",
             "uniform": "dpmpp_2m_sde"}, "exponential"),
    Sampler("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), {}, "exponential"),
    Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), {}, "karras"),
    Sampler("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), {}, "exponential"),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), {"uniform": "euler_a"}),
    Sampler("Euler", ("k_euler",), {"uniform": "euler", "karras": "euler_karras"}),
    Sampler("LMS", ("k_lms",), {"uniform": "lms"}),
    Sampler("Heun", ("k_heun",), {"uniform": "heun"}),
    Sampler("DPM2", ("k_dpm_2",), {}, "karras"),
    Sampler("DPM2 a", ("k_dpm_2_a",), {}, "karras"),
    Sampler("DPM fast", ("k_dpm_fast",), {}),
    Sampler("DPM adaptive", ("k_dpm_ad",), {}),
    Sampler("Restart", ("restart",), {}, "karras"),
    Sampler("DDIM", ("ddim",), {"uniform": "ddim"}),
    Sampler("PLMS", ("plms",), {"uniform": "pndm"}),
    Sampler("UniPC", ("unipc",), {"uniform": "unipc"}),
    Sampler("LCM", ("lcm",), {"uniform": "lcm"}),
)
"""A1111's samplers (``modules/sd_samplers_*.py``); those with no ``runs`` are known but
not available here (a clear 400, not A1111's 404 for a name nobody knows)."""

_BY_NAME = {sampler.name.lower(): sampler for sampler in SAMPLERS}
_BY_NAME |= {alias.lower(): sampler for sampler in SAMPLERS for alias in sampler.aliases}
_SCHEDULE_BY_NAME = {key.lower(): s for s in SCHEDULES for key in (s.name, s.label, *s.aliases)}


def supported_samplers() -> list[Sampler]:
    """The samplers this server can run (with their optional packages installed)."""
    installed = set(available_schedulers())
    return [s for s in SAMPLERS if any(c in installed for c in s.runs.values())]


def find_schedule(name: str | None) -> Schedule:
    """The schedule type called ``name`` (name, label or alias, any case); None is automatic."""
    if name is None or not name.strip():
        return AUTOMATIC
    schedule = _SCHEDULE_BY_NAME.get(name.strip().lower())
    if schedule is None:
        known = ", ".join(s.name for s in SCHEDULES)
        raise InvalidRequest(f"unknown scheduler {name!r}; valid: {known}", param="scheduler")
    return schedule


def _split_combined(name: str) -> tuple[str, Schedule | None]:
    """``"DPM++ 2M Karras"`` → (``"DPM++ 2M"``, Karras); a name without a schedule suffix as is."""
    lowered = name.lower()
    for schedule in SCHEDULES:
        for option in (schedule.label, schedule.name, *schedule.aliases):
            suffix = " " + option.lower()
            if lowered.endswith(suffix) and lowered[: -len(suffix)] in _BY_NAME:
                return name[: -len(suffix)], schedule
    return name, None


def resolve_sampler(sampler_name: str | None,
                    scheduler: str | None) -> tuple[str | None, Sampler | None, Schedule]:
    """The canonical pixelmill scheduler for A1111's ``sampler_name`` + ``scheduler``.

    A1111 >= 1.9: a schedule named at the end of the sampler name wins; otherwise the
    ``scheduler`` field (name or label, any case); ``automatic`` or nothing is the
    sampler's default schedule. No sampler: (None, None, schedule) — the model's own
    scheduler (the server's default). An unknown sampler is :class:`NotFound`
    ("Sampler not found", as A1111 answers); a known sampler or schedule this server
    cannot run is :class:`InvalidRequest` naming the field and what it can run.
    """
    schedule = find_schedule(scheduler)
    if sampler_name is None or not sampler_name.strip():
        if schedule is not AUTOMATIC:
            raise InvalidRequest(f"scheduler {schedule.label!r} needs a sampler_name", param="scheduler")
        return None, None, schedule
    base, named = _split_combined(sampler_name.strip())
    sampler = _BY_NAME.get(base.lower())
    if sampler is None:
        raise NotFound("Sampler not found", param="sampler_name")
    schedule = named or schedule
    wanted = sampler.schedule_for(schedule)
    if not sampler.runs:
        names = ", ".join(s.name for s in supported_samplers())
        raise InvalidRequest(f"sampler {sampler.name!r} is not available on this server; available: {names}",
                             param="sampler_name")
    canonical = sampler.runs.get(wanted)
    if canonical is None and schedule is AUTOMATIC:
        # "Automatic" is the sampler's default schedule; where this server cannot run that
        # one, its first runnable schedule is this sampler's default here (the infotext
        # and ``info`` name the schedule that ran).
        canonical = next(iter(sampler.runs.values()))
    if canonical is None:
        labels = ", ".join(_SCHEDULE_BY_NAME[name].label for name in sampler.runs)
        raise InvalidRequest(
            f"schedule type {_SCHEDULE_BY_NAME[wanted].label!r} is not available with sampler "
            f"{sampler.name!r} "
            f"on this server; available: {labels}", param="scheduler")
    return canonical, sampler, schedule

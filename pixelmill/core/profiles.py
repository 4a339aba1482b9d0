"""Model profiles: per-model defaults for steps, guidance and scheduler.

Few-step models only work with their own settings (SDXL-Lightning: 4 steps, guidance 0,
Euler with trailing timesteps; FLUX.1-schnell: 4 steps, no guidance), so a server default of
30 steps at CFG 5 would waste 7x the time or ruin the image. A :class:`ProfileTable` maps a
model to such defaults; :func:`pixelmill.core.policy.resolve` applies them to the fields a
request left unset, before the server-wide defaults. The table ships as
``model_profiles.toml`` next to this module; an operator's file (``--model-profiles``) is
read first, so its entries extend or override the shipped ones.

Framework-free (stdlib TOML only): the API host resolves requests with it.
"""

from __future__ import annotations

import fnmatch
import functools
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pixelmill.core.samplers import canonical_scheduler

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHIPPED = Path(__file__).with_name("model_profiles.toml")


@dataclass(frozen=True)
class ModelProfile:
    """Defaults for the models a profile matches (None: no opinion, the server default applies)."""

    name: str
    models: tuple[str, ...] = ()
    family: str | None = None  # a name match counts only for a model of this family (when known)
    default_for: str | None = None  # the defaults of every model of this family key (``flux/schnell``)
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    note: str = ""

    def matches_name(self, model: str) -> bool:
        """Whether a glob in ``models`` matches the model's name (or its path's/hub id's last part)."""
        candidates = {model.lower(), PurePosixPath(model.replace("\\", "/")).name.lower()}
        return any(fnmatch.fnmatchcase(c, glob.lower()) for glob in self.models for c in candidates)


class ProfileTable:
    """Profiles in lookup order: the operator's first, then the shipped table."""

    def __init__(self, profiles: tuple[ModelProfile, ...]):
        self.profiles = profiles

    def find(self, model: str | None, family_key: str | None = None) -> ModelProfile | None:
        """The profile for ``model`` by name first (of a matching family, when both are known),
        else the ``default_for`` profile of ``family_key`` (``flux/schnell``, then ``flux``)."""
        family = family_key.split("/")[0] if family_key else None
        if model:
            for profile in self.profiles:
                if profile.matches_name(model) and (family is None or profile.family in (None, family)):
                    return profile
        if family_key:
            for key in (family_key, family):
                for profile in self.profiles:
                    if profile.default_for == key:
                        return profile
        return None


def parse_profiles(text: str, *, source: str) -> tuple[ModelProfile, ...]:
    """Profiles from TOML text (``[[profile]]`` tables); ``ValueError`` naming ``source`` if malformed."""
    try:
        data = tomllib.loads(text)
        profiles = []
        for entry in data.get("profile", []):
            unknown = set(entry) - {"name", "models", "family", "default_for", "steps", "guidance", "scheduler",
                                    "note"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)} in profile {entry.get('name')!r}")
            profiles.append(ModelProfile(
                name=str(entry["name"]), models=tuple(str(m) for m in entry.get("models", ())),
                family=entry.get("family"), default_for=entry.get("default_for"),
                steps=int(entry["steps"]) if "steps" in entry else None,
                guidance=float(entry["guidance"]) if "guidance" in entry else None,
                scheduler=canonical_scheduler(entry["scheduler"]) if entry.get("scheduler") else None,
                note=str(entry.get("note", ""))))
        return tuple(profiles)
    except Exception as exc:  # TOML, key, type and scheduler-name errors alike
        message = getattr(exc, "message", None) or str(exc)
        raise ValueError(f"{source}: bad model profile table: {message}") from exc


@functools.lru_cache(maxsize=8)
def load_profiles(extra: Path | None = None) -> ProfileTable:
    """The shipped table, preceded by the operator's file ``extra`` when given."""
    profiles = parse_profiles(SHIPPED.read_text("utf-8"), source=SHIPPED.name)
    if extra is not None:
        profiles = parse_profiles(Path(extra).read_text("utf-8"), source=str(extra)) + profiles
    return ProfileTable(profiles)

"""The request policy: one step turns a dialect's request into the request that runs.

Dialects translate their wire bodies into a :class:`GenerationRequest` whose unset fields
are None. :func:`resolve` is the only place that fills them (from a :class:`Policy`, the
small view of the settings it needs), takes the size from the input image, resolves
model aliases and checks every limit. Its :class:`ResolvedRequest` is what the job store
keeps, what the batch key reads and what the engine runs: nothing after it derives a
default or a size again. Violations raise :class:`InvalidRequest` naming the internal
field; dialects translate the name to their own wire parameter.

Framework-free: no settings class, no image library (a PNG's size is in its header).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol

from pydantic import ValidationError

from pixelmill.core.errors import InvalidRequest
from pixelmill.core.families import ModelFamily, check_family
from pixelmill.core.profiles import ModelProfile, ProfileTable
from pixelmill.core.sizes import Limits, check_size, fit_size, png_size, request_size  # noqa: F401 - re-exported
from pixelmill.core.prompt_syntax import check_emphasis, extract_lora_tags
from pixelmill.core.samplers import canonical_scheduler
from pixelmill.core.types import GenerationRequest, LoraSpec, Mode, RefinerSpec, ResolvedRequest

MAX_LORAS = 5
MAX_CONTROLNETS = 3
LORA_WEIGHT_RANGE = (-2.0, 2.0)
CONTROL_SCALE_RANGE = (0.0, 2.0)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A model, LoRA or ControlNet name: a plain identifier, never a path."""
@dataclass(frozen=True)
class Defaults:
    """Values of the fields a request leaves unset, and the server's default refiner."""

    steps: int
    guidance: float
    strength: float
    mask_blur: int
    refiner: str | None
    refiner_switch_at: float


@dataclass(frozen=True)
class Policy:
    """Everything :func:`resolve` needs from the settings: limits, defaults, model names.

    ``default_model_names`` are the names that mean "the default model" (the OpenAI
    aliases and the default's own names); ``model_aliases`` are ``(name, model)`` pairs
    from ``--model-aliases name=model``: a request naming ``name`` runs ``model``.
    ``families`` answers "which family is this model (None: the default)?" from its files
    (``pixelmill.registry.families.FamilyResolver``; None or an unknown answer: no family
    checks here, the engine checks after loading); ``profiles`` gives per-model defaults.
    """

    limits: Limits
    defaults: Defaults
    default_model_names: frozenset[str]
    model_aliases: tuple[tuple[str, str], ...] = ()
    families: Callable[[str | None], ModelFamily | None] | None = None
    profiles: ProfileTable | None = None

    def alias_target(self, name: str) -> str:
        """The model ``name`` stands for under ``model_aliases`` (``name`` itself if none),
        following an alias of an alias (a hosted version id → ``owner/name`` → checkpoint)."""
        seen = {name}
        while (target := next((model for alias, model in self.model_aliases if alias == name), None)) is not None:
            if target in seen:  # a cycle: stop at the last name reached
                break
            seen.add(target)
            name = target
        return name


class Catalog(Protocol):
    """What the policy asks about models (``pixelmill.jobs.service.ModelCatalog`` answers)."""

    @property
    def default_model(self) -> str | None:
        """The default model's name, or None when only a worker knows it."""

    def check(self, request: GenerationRequest) -> None:
        """Raise ``NotFound``/``InvalidRequest`` for a name no worker can serve."""


class HasPolicy(Protocol):
    """Anything that can give a :class:`Policy` (``Settings``)."""

    def policy(self) -> Policy:
        """The policy view."""


def check_name(name: str, *, param: str) -> str:
    """Refuse anything that is not a plain identifier (before touching the filesystem)."""
    if not NAME_PATTERN.fullmatch(name or "") or ".." in name:
        raise InvalidRequest(f"{name!r} is not a valid name: use letters, digits, '.', '_' and '-' only",
                             param=param)
    return name


def normalize_request(request: GenerationRequest) -> GenerationRequest:
    """Move A1111 ``<lora:name:weight>`` tags out of the prompt into ``loras``.

    Tags come after the explicit ``loras`` in order; the prompt keeps its other text.
    Runs before the checks, so a tag counts against the same limits as the field.
    """
    prompt, tags = extract_lora_tags(request.prompt)
    if not tags:
        return request
    loras = (*request.loras, *(LoraSpec(name=name, weight=weight) for name, weight in tags))
    return request.model_copy(update={"prompt": prompt, "loras": loras})


def resolve(request: GenerationRequest, policy: Policy, catalog: Catalog | None = None) -> ResolvedRequest:
    """The request as it will be stored and run, or :class:`InvalidRequest` for the first
    limit it breaks (``NotFound`` from ``catalog`` for a model nobody serves).

    LoRA tags move out of the prompt; a ``name=model`` alias becomes its model; bare
    aliases become the default model's name (``catalog.default_model``; None without a
    catalog or while unknown); every unset
    field gets its default; img2img/inpaint without a size take the input image's, fitted
    to the limits; the scheduler name becomes canonical; the server's default refiner
    applies to txt2img and img2img. ``catalog`` None skips the model-name check. With
    ``policy.families``/``profiles``: the model's profile fills unset steps, guidance and
    scheduler before the server defaults, and what its family cannot do is refused.
    """
    _check_encodable(request)  # first: before a tag parser, the store or a tokenizer sees the text
    request = normalize_request(request)
    _check_text(request, policy.limits)
    _check_images(request)
    width, height = request_size(request, policy.limits)
    defaults = policy.defaults
    model = _model(request.model, policy, catalog)
    family = policy.families(model) if policy.families is not None else None
    profile = _profile(request, model, family, policy)
    guidance = _first(request.guidance, profile.guidance if profile else None, defaults.guidance)
    if family is not None and not family.guidance and request.guidance is None:
        guidance = 0.0  # the model has no guidance input: 0 says so in the ledger and metadata
    scheduler = request.scheduler or (profile.scheduler if profile else None)
    resolved = ResolvedRequest.model_validate({
        **dict(request),
        "model": model,
        "width": width,
        "height": height,
        "steps": _first(request.steps, profile.steps if profile else None, defaults.steps),
        "guidance": guidance,
        "strength": defaults.strength if request.strength is None else request.strength,
        "mask_blur": defaults.mask_blur if request.mask_blur is None else request.mask_blur,
        "scheduler": canonical_scheduler(scheduler) if scheduler else None,
        "refiner": _refiner(request, defaults, family),
        "family": family.key if family is not None else None,
    })
    if family is not None:
        check_family(resolved, family, guidance_given=request.guidance is not None)
        if family.schedulers is not None and resolved.scheduler in family.schedulers:
            resolved = resolved.model_copy(update={"scheduler": None})  # its own scheduler is that one
    _check_values(resolved, policy.limits)
    if catalog is not None:
        catalog.check(resolved)
    return resolved


def as_resolved(request: GenerationRequest, policy: Policy) -> ResolvedRequest:
    """``request`` as a :class:`ResolvedRequest`, resolving it only if it is not one yet.

    A job's request comes back from the store (JSON) as a plain ``GenerationRequest``
    whose fields are concrete: it is re-typed, never resolved again, so a worker whose
    settings differ from the API host's runs exactly what was stored. A request built
    in-process (CLI, benchmarks, tests) with unset fields is resolved by ``policy``.
    """
    if isinstance(request, ResolvedRequest):
        return request
    try:
        resolved = ResolvedRequest.model_validate(dict(request))
    except ValidationError:
        return resolve(request, policy)
    if resolved.refiner is not None and resolved.refiner.switch_at is None:
        return resolve(request, policy)  # built in-process with the hand-off left unset
    return resolved


def prepare_request(request: GenerationRequest, settings: HasPolicy) -> ResolvedRequest:
    """:func:`resolve` under ``settings.policy()`` without a catalog: for in-process callers."""
    return resolve(request, settings.policy())


def _model(name: str | None, policy: Policy, catalog: Catalog | None) -> str | None:
    name = policy.alias_target(name) if name else name
    if name and name not in policy.default_model_names:
        return name
    # An alias, the default's own name or nothing: all the same model, so one name
    # (requests for it batch together and the ledger sees one model).
    return catalog.default_model if catalog is not None else None


def _first(*values):
    """The first value that is not None."""
    return next(value for value in values if value is not None)


def _profile(request: GenerationRequest, model: str | None, family: ModelFamily | None,
             policy: Policy) -> ModelProfile | None:
    """The model profile for the request's model: by the name the client sent (an alias's
    target), else the resolved model's name, else the family the files say it is."""
    if policy.profiles is None:
        return None
    family_key = family.key if family is not None else None
    requested = policy.alias_target(request.model) if request.model else None
    if requested in policy.default_model_names:
        requested = None  # a bare alias ("black-forest-labs/flux-schnell") means the default model
    for name in (requested, model):
        if name and (found := policy.profiles.find(name, family_key)) is not None:
            return found
    return policy.profiles.find(None, family_key)


def _refiner(request: GenerationRequest, defaults: Defaults, family: ModelFamily | None = None) -> RefinerSpec | None:
    """The request's refiner with its hand-off filled in, else the server's default refiner
    (never for a family without a refiner pass: the server's default is not the client's ask)."""
    if request.refiner is None:
        if defaults.refiner and request.mode is not Mode.inpaint and (family is None or family.refiner):
            return RefinerSpec(name=defaults.refiner, switch_at=defaults.refiner_switch_at)
        return None
    if request.refiner.switch_at is None:
        return request.refiner.model_copy(update={"switch_at": defaults.refiner_switch_at})
    return request.refiner


def _number(value: float) -> str:
    """``value`` for a message: integers in full (a seed is 4294967295, never 4.29497e+09),
    other numbers short (0.75, 30)."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    return f"{value:g}"


def _check_range(value: float, low: float, high: float, param: str) -> None:
    if not low <= value <= high:
        raise InvalidRequest(
            f"{param} must be between {_number(low)} and {_number(high)}, got {_number(value)}", param=param)


def _check_encodable(request: GenerationRequest) -> None:
    """Refuse text UTF-8 cannot encode: a lone UTF-16 surrogate, which JSON can spell
    (``"\\ud800"``) and Python's decoder keeps. Storage, the tokenizer and the error body
    itself would fail on it later with a 500, so the message names the position, not the text."""
    fields = {"prompt": request.prompt, "negative_prompt": request.negative_prompt,
              "model": request.model, "scheduler": request.scheduler}
    fields |= {f"loras[{i}].name": lora.name for i, lora in enumerate(request.loras)}
    fields |= {f"controlnets[{i}].name": control.name for i, control in enumerate(request.controlnets)}
    if request.refiner is not None:
        fields["refiner.name"] = request.refiner.name
    for param, text in fields.items():
        try:
            (text or "").encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequest(
                f"{param} is not valid Unicode text: a lone UTF-16 surrogate "
                f"U+{ord(text[exc.start]):04X} at character {exc.start}", param=param) from None


def _check_text(request: GenerationRequest, limits: Limits) -> None:
    if request.mode is Mode.txt2img and not request.prompt.strip():
        raise InvalidRequest("prompt must not be empty", param="prompt")
    for param in ("prompt", "negative_prompt"):
        text = getattr(request, param)
        if len(text) > limits.max_prompt_chars:
            raise InvalidRequest(f"{param} is {len(text)} characters; the limit is {limits.max_prompt_chars}",
                                 param=param)
        # After the length check (parsing grows with depth × length): emphasis the engine
        # would refuse (2,000 nested "(", a weight of inf) is refused before anything is queued.
        check_emphasis(text, param=param)


def _check_images(request: GenerationRequest) -> None:
    if request.mode in (Mode.img2img, Mode.inpaint) and request.init_image is None:
        raise InvalidRequest(f"{request.mode.value} needs an input image", param="init_image")
    if request.mode is Mode.inpaint and request.mask_image is None:
        raise InvalidRequest("inpaint needs a mask", param="mask_image")
    if request.mode is Mode.txt2img and request.init_image is not None:
        raise InvalidRequest("txt2img takes no input image; use img2img", param="init_image")


def _check_values(request: ResolvedRequest, limits: Limits) -> None:
    _check_range(request.steps, 1, limits.max_steps, "steps")
    _check_range(request.n, 1, limits.max_n, "n")
    _check_range(request.guidance, 0, limits.max_guidance, "guidance")
    _check_range(request.strength, 0, 1, "strength")
    _check_range(request.mask_blur, 0, 64, "mask_blur")
    if request.seed != -1:
        _check_range(request.seed, 0, 2**32 - 1, "seed")
    if request.clip_skip is not None:
        _check_range(request.clip_skip, 1, 12, "clip_skip")
    if request.output_quality is not None:
        _check_range(request.output_quality, 1, 100, "output_quality")
    _check_adapters(request)
    _check_refiner(request)
    if request.mode is not Mode.txt2img and request.strength == 0:
        raise InvalidRequest("strength 0 would return the input unchanged", param="strength")


def _check_adapters(request: ResolvedRequest) -> None:
    if len(request.loras) > MAX_LORAS:
        raise InvalidRequest(f"at most {MAX_LORAS} LoRAs per request, got {len(request.loras)}", param="loras")
    seen: set[str] = set()
    for index, lora in enumerate(request.loras):
        check_name(lora.name, param=f"loras[{index}].name")
        _check_range(lora.weight, *LORA_WEIGHT_RANGE, f"loras[{index}].weight")
        if lora.name in seen:
            raise InvalidRequest(f"LoRA {lora.name!r} is given twice; give it once with one weight",
                                 param=f"loras[{index}].name")
        seen.add(lora.name)
    if len(request.controlnets) > MAX_CONTROLNETS:
        raise InvalidRequest(f"at most {MAX_CONTROLNETS} ControlNets per request, got {len(request.controlnets)}",
                             param="controlnets")
    for index, control in enumerate(request.controlnets):
        check_name(control.name, param=f"controlnets[{index}].name")
        _check_range(control.scale, *CONTROL_SCALE_RANGE, f"controlnets[{index}].scale")
        _check_range(control.start, 0, 1, f"controlnets[{index}].start")
        _check_range(control.end, 0, 1, f"controlnets[{index}].end")
        if control.start >= control.end:
            raise InvalidRequest("start must be below end", param=f"controlnets[{index}].start")
    if request.return_control_images and not request.controlnets:
        raise InvalidRequest("return_control_images needs at least one ControlNet", param="return_control_images")


def _check_refiner(request: ResolvedRequest) -> None:
    if request.refiner is None:
        return
    check_name(request.refiner.name, param="refiner.name")
    if not 0 < request.refiner.switch_at < 1:
        raise InvalidRequest(
            f"switch_at must be between 0 and 1 (exclusive), got {_number(request.refiner.switch_at)}",
            param="refiner.switch_at")
    if request.mode is Mode.inpaint:
        raise InvalidRequest("a refiner pass is available for txt2img and img2img, not inpaint", param="refiner")
    if request.mode is Mode.img2img:
        if request.controlnets:
            # diffusers' ControlNet img2img pipeline cannot stop early (no denoising_end).
            raise InvalidRequest("a refiner cannot follow ControlNet img2img; use txt2img or drop one",
                                 param="refiner")
        if request.strength <= 1 - request.refiner.switch_at:
            raise InvalidRequest(
                f"with strength {request.strength:g} the base model starts after the refiner's switch point "
                f"{request.refiner.switch_at:g}; raise strength above {1 - request.refiner.switch_at:g} "
                "or lower switch_at", param="refiner.switch_at")

"""Replicate model names, versions and deployments, on top of the model alias table.

A Replicate name is ``owner/name``. This server knows three kinds:

* an entry of ``--model-aliases``: bare (``stability-ai/sdxl``: the default model) or
  ``name=model`` (``stability-ai/sdxl=my-sdxl``: that checkpoint); the request policy
  resolves it, like the OpenAI names;
* ``pixelmill/<checkpoint>``: a checkpoint of the models directory by its own name;
* ``pixelmill/default``: the default model.

Anything else is a 404 naming the parameter. Each name has one version, whose id is a
hash of the name (:func:`pixelmill.jobs.predictions.version_id`), so ``owner/name:<id>``
works; a hosted version id that code already carries (``stability-ai/sdxl:39ed52f2…``)
works when it is itself an alias (``--model-aliases 39ed52f2…=stability-ai/sdxl``), because
the official client sends only the version id.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pixelmill import __version__
from pixelmill.api.replicate.protocol import PredictionInput
from pixelmill.core.errors import NotFound
from pixelmill.jobs.predictions import DEFAULT_NAME, OWNER, PREFIX, timestamp, version_id
from pixelmill.registry.models_dir import ModelKind
from pixelmill.services import Services

OUTPUT_SCHEMA = {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}
"""A list of image URLs; never ``x-cog-array-type: iterator`` (the client would stream it)."""
COG_VERSION = f"pixelmill-{__version__}"
"""Not a Cog version: the client's schema shim ignores a value it cannot parse."""


def alias_names(services: Services) -> list[str]:
    """Every name of the alias table, bare or ``name=model``."""
    settings = services.settings
    return [*sorted(settings.bare_model_aliases), *(name for name, _ in settings.model_alias_pairs)]


def known_models(services: Services) -> list[str]:
    """The ``owner/name`` names this server answers to."""
    names = [name for name in alias_names(services) if "/" in name]
    names.append(f"{OWNER}/{DEFAULT_NAME}")
    names += [f"{OWNER}/{entry.name}" for entry in services.registry.list(ModelKind.checkpoint)
              if entry.listed_kind == "checkpoint"]
    return list(dict.fromkeys(names))


def request_model(name: str, services: Services, *, param: str = "model") -> str | None:
    """The ``model`` of the :class:`GenerationRequest` for the Replicate name ``name``
    (the policy resolves aliases and checks checkpoints); :class:`NotFound` naming ``param``."""
    if name in alias_names(services):
        return name
    owner, _, local = name.partition("/")
    if owner == OWNER and local == DEFAULT_NAME:
        return None
    if owner == OWNER and local:
        return local  # the catalog checks that the checkpoint exists (404 naming model)
    raise NotFound(f"model {name!r} is not served here; map it to a local model with "
                   f"--model-aliases '{name}=CHECKPOINT' (or use pixelmill/CHECKPOINT)", param=param)


def check_model(owner: str, name: str, services: Services) -> str:
    """``owner/name`` if this server knows it (checkpoints included), else :class:`NotFound`."""
    full = f"{owner}/{name}"
    if full not in known_models(services):
        request_model(full, services)  # raises for an unknown owner
        raise NotFound(f"model {full!r} does not exist", param="model")
    return full


def version_model(version: str, services: Services) -> str | None:
    """The request ``model`` for a ``version`` field: ``owner/name[:id]``, one of this server's
    version ids, or an alias (a hosted version id mapped with ``--model-aliases``)."""
    if "/" in version:
        return request_model(version.partition(":")[0], services, param="version")
    for name in known_models(services):
        if version_id(name) == version:
            return request_model(name, services, param="version")
    if version in alias_names(services):
        return version
    raise NotFound(f"version {version!r} does not exist here; use owner/name, or map a hosted version id "
                   f"with --model-aliases '{version}=OWNER/NAME'", param="version")


def version_object(model: str, version: str | None = None) -> dict:
    """A version of ``model`` as ``GET …/versions/{id}`` returns it, with the input schema."""
    return {
        "id": version or version_id(model),
        "created_at": timestamp(datetime.now(timezone.utc)),
        "cog_version": COG_VERSION,
        "openapi_schema": {
            "openapi": "3.0.2",
            "info": {"title": model, "version": __version__},
            "paths": {},
            "components": {"schemas": {"Input": PredictionInput.model_json_schema(),
                                       "Output": OUTPUT_SCHEMA}},
        },
    }


def check_version(owner: str, name: str, version: str, services: Services) -> dict:
    """The version ``version`` of ``owner/name``: its own id, or an alias that stands for it."""
    model = check_model(owner, name, services)
    if version != version_id(model) and version not in alias_names(services):
        raise NotFound(f"model {model!r} has no version {version!r}; its version is {version_id(model)}",
                       param="version")
    return version_object(model, version)


def model_object(model: str, base_url: str) -> dict:
    """``GET /v1/models/{owner}/{name}``: the model with its one (latest) version."""
    owner, _, name = model.partition("/")
    return {
        "url": f"{base_url}{PREFIX}/v1/models/{model}", "owner": owner, "name": name,
        "description": f"served by pixelmill {__version__}", "visibility": "private",
        "github_url": None, "paper_url": None, "license_url": None, "run_count": 0,
        "cover_image_url": None, "default_example": None, "latest_version": version_object(model),
    }


def deployment_object(model: str, services: Services) -> dict:
    """``GET /v1/deployments/{owner}/{name}``: a deployment is a model name served by this
    server's workers."""
    owner, _, name = model.partition("/")
    workers = services.settings.workers
    return {
        "owner": owner, "name": name,
        "current_release": {
            "number": 1, "model": model, "version": version_id(model),
            "created_at": timestamp(datetime.now(timezone.utc)),
            "created_by": {"type": "organization", "username": owner, "name": owner, "github_url": None},
            "configuration": {"hardware": "pixelmill", "min_instances": workers, "max_instances": workers},
        },
    }

"""Model titles as A1111 lists and takes them, over pixelmill's models directory.

A1111 names a checkpoint by a *title* (``"sd_xl_base_1.0.safetensors [31e35c80fc]"``) and
clients send titles back (``options.sd_model_checkpoint``, ``override_settings``,
``refiner_checkpoint``). pixelmill's title is the model's name; a title that carries
A1111's file extension or ``[hash]`` suffix is matched by its name, case-insensitively,
as A1111's own lookup forgives. The default model is listed too, and choosing it means
"the server's default" (the request leaves ``model`` unset).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pixelmill.core.errors import NotFound
from pixelmill.registry.models_dir import ModelKind
from pixelmill.services import Services

_SUFFIX = re.compile(r"(\s*\[[0-9a-fA-F]{6,}\])?\s*$")
_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".bin")


def default_model(services: Services) -> str:
    """The name of the server's default model (configured, else what the worker loaded)."""
    info = services.backend.info if services.backend is not None else None
    return services.settings.model or (info.model if info is not None else None) or "default"


def base_names(services: Services) -> list[str]:
    """Titles of ``GET /sdapi/v1/sd-models``: the default model first, then the base checkpoints."""
    default = default_model(services)
    names = [entry.name for entry in services.registry.list(ModelKind.checkpoint) if not entry.refiner]
    return [default, *(name for name in names if name != default)]


def current_title(services: Services) -> str:
    """The title of the server's default model (``sd_model_checkpoint`` of a caller that chose none)."""
    return default_model(services)


def bare_name(title: str) -> str:
    """A title without A1111's ``[hash]`` suffix and file extension."""
    name = _SUFFIX.sub("", title.strip())
    for extension in _EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def checkpoint_resolver(services: Services) -> Callable[[str, str], str | None]:
    """``resolve(title, param)``: the checkpoint name a title means, None for the default model,
    :class:`NotFound` naming ``param`` for a title nobody serves (blocking: may rescan the folder)."""
    def resolve(title: str, param: str) -> str | None:
        wanted = bare_name(title).lower()
        defaults = {default_model(services), *services.settings.policy().default_model_names}
        if wanted in {name.lower() for name in defaults if name}:
            return None
        for attempt in range(2):
            for entry in services.registry.list(ModelKind.checkpoint):
                if entry.name.lower() == wanted:
                    return entry.name
            if attempt == 0:
                services.registry.refresh()  # a file added since the last scan
        titles = ", ".join(base_names(services))
        raise NotFound(f"model {title!r} not found; available: {titles}", param=param)

    return resolve

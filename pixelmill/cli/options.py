"""Expose :class:`Settings` fields as typer options, documented by their docstrings.

``@with_settings("Storage", "Models", "public_url")`` gives a command one flag per named
setting (a section title names all of the section's settings; bare ``@with_settings``,
every setting) and a ready :class:`Settings` (flag > ``PIXELMILL_*`` variable > default).
A command lists only the settings it reads, so its ``--help`` is not buried under the
server's sixty: settings it does not list still come from their variables. Each flag's
help shows its default and its variable, grouped in panels by :data:`SECTIONS`.

:class:`App` is the ``typer.Typer`` every pixelmill command group uses: it renders
docstrings' reference markup (````url````, ``:class:`X```) as plain text and shows no value
type for flags that take none (``--help <bool>`` read as if it wanted an argument).
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from pixelmill.settings import Settings, load_settings

SECTIONS: dict[str, tuple[str, ...]] = {
    "Network": ("host", "port", "public_url"),
    "Security": ("insecure_no_auth", "cors_origins"),
    "Storage": ("data_dir", "db", "result_store", "result_retention_s"),
    "Models": ("models_dir", "model", "model_aliases", "refiner", "refiner_switch_at", "model_cache_gb",
               "lora_cache_size", "lora_cache_mb", "lora_max_rank", "controlnet_cache_size"),
    "Model families": ("model_profiles", "text_encoder_precision", "text_encoder_quantization"),
    "Device": ("device", "offload", "vae_tiling", "vae_slicing", "compile", "precision", "vae",
               "vae_tile_above_pixels", "compile_buckets", "cuda_graphs", "png_compress_level", "encode_threads"),
    "Queue": ("workers", "max_queued", "sync_timeout_s"),
    "Workers": ("worker_id", "lease_s", "heartbeat_s", "progress_interval_s", "poll_interval_s", "max_attempts",
                "max_batch_size", "max_batch_wait_ms", "preview_steps"),
    "Webhooks": ("webhook_secret", "webhook_allow_private"),
    "Generation defaults": ("default_steps", "default_guidance", "default_strength", "default_mask_blur",
                            "variation_strength"),
    "Request limits": ("min_side", "max_side", "max_pixels", "max_steps", "max_n", "max_guidance",
                       "max_prompt_chars", "max_json_bytes", "max_multipart_bytes", "max_upload_pixels",
                       "max_request_pixels", "max_batch_images"),
    "Intake": ("max_body_bytes_in_flight", "body_timeout_s", "intake_threads", "shutdown_timeout_s"),
    "Cost": ("cost_gpu_hour", "cost_overhead_month", "cost_gpu_month", "cost_hours_per_month", "cost_utilisation",
             "cost_compare_to", "cost_config"),
    "Cost alerts": ("cost_check_interval_s", "cost_alert_webhook"),
    "Gateway": ("backends",),
    "Operations": ("log_format", "metrics_public"),
}
"""Help panels, in the order ``--help`` shows them; every setting belongs to one."""
OTHER = "Other settings"
"""The panel of a setting no section names yet (a test keeps it empty)."""

# What each command reads; everything else it still takes from PIXELMILL_* variables.
WORKER = ("Storage", "Models", "Model families", "Device", "Workers", "Webhooks", "public_url", "log_format")
STORE = ("data_dir", "db")
COST = (*STORE, "Cost", "backends")


# ---- help text --------------------------------------------------------------------------------

_LITERAL = re.compile(r"``(.+?)``")
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """Docstring reference markup as people read it: ````url```` → url, ``:class:`a.B``` → a.B.

    With rich help (typer's default) the result is escaped too, so a ``[self_hosted]`` in
    the text is shown, not taken for a style tag and dropped.
    """
    text = _ROLE.sub(lambda m: m.group(1), _LITERAL.sub(lambda m: m.group(1), text))
    if typer.core.HAS_RICH:
        from rich.markup import escape

        return escape(text)
    return text


def _dim(text: str, style: str) -> str:
    """``[text]`` shown dim after an option's help, the way typer shows its own defaults."""
    if typer.core.HAS_RICH:
        return f"[{style}]\\[{text}][/{style}]"
    return f"[{text}]"


def _default_text(field: FieldInfo) -> str | None:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return None  # the docstring says what "unset" means
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_help(name: str) -> str:
    """The ``--help`` text of setting ``name``: its docstring, default and variable."""
    field = Settings.model_fields[name]
    text = plain(" ".join((field.description or "").split()))
    default = _default_text(field)
    if default is not None:
        text += " " + _dim(f"default: {default}", "dim")
    # pydantic-settings reads a list variable as JSON: say so, or PIXELMILL_CORS_ORIGINS=a,b fails.
    as_json = ", a JSON list" if typing.get_origin(field.annotation) is list else ""
    return text + " " + _dim(f"env var: PIXELMILL_{name.upper()}{as_json}", "dim yellow")


# ---- settings → options -------------------------------------------------------------------------


def section_of(name: str) -> str:
    """The help panel of setting ``name``."""
    return next((title for title, names in SECTIONS.items() if name in names), OTHER)


def _ordered() -> list[str]:
    """Every setting in help order: by section, then any a section does not name yet."""
    listed = [name for names in SECTIONS.values() for name in names if name in Settings.model_fields]
    return listed + [name for name in Settings.model_fields if name not in listed]


def expand(names: Iterable[str]) -> list[str]:
    """Setting names for section titles and setting names, in help order."""
    wanted: set[str] = set()
    for name in names:
        if name in SECTIONS:
            wanted.update(SECTIONS[name])
        elif name in Settings.model_fields:
            wanted.add(name)
        else:
            raise ValueError(f"{name!r} is neither a settings section nor a setting")
    return [name for name in _ordered() if name in wanted]


def _option_type(annotation: Any) -> Any:
    """A type typer understands for a settings annotation (Literal stays: typer checks choices)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return annotation
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _option_type(args[0])
    if origin is list:
        return list[str]
    if annotation in (str, int, float, bool, Path):
        return annotation
    return str


def _settings_parameters(names: list[str]) -> list[inspect.Parameter]:
    params = []
    for name in names:
        kind = _option_type(Settings.model_fields[name].annotation)
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        option = typer.Option(*decls, help=setting_help(name), envvar=None, show_default=False,
                              rich_help_panel=section_of(name))
        params.append(inspect.Parameter(f"setting_{name}", inspect.Parameter.KEYWORD_ONLY,
                                        annotation=Annotated[kind | None, option], default=None))
    return params


def with_settings(*names: Any) -> Any:
    """Decorate a typer command taking ``settings: Settings`` with flags for the named settings.

    ``@with_settings`` (bare) adds every setting; ``@with_settings("Storage", "port")`` the
    settings of the section ``Storage`` and ``port``.
    """
    if len(names) == 1 and callable(names[0]):
        return _decorate(names[0], _ordered())
    fields = expand(names)
    return lambda command: _decorate(command, fields)


def _decorate(command: Callable[..., Any], fields: list[str]) -> Callable[..., Any]:
    # Resolve string annotations (``from __future__ import annotations`` in the command's
    # module): typer must see the real ``Annotated[..., typer.Option(...)]`` objects.
    hints = typing.get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(command).parameters.values() if p.name != "settings"
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        overrides = {k.removeprefix("setting_"): kwargs.pop(k) for k in list(kwargs) if k.startswith("setting_")}
        try:
            settings = load_settings(**overrides)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise typer.BadParameter(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        return command(settings=settings, **kwargs)

    wrapper.__signature__ = inspect.Signature([*own, *_settings_parameters(fields)])  # type: ignore[attr-defined]
    return wrapper


# ---- commands that render cleanly ---------------------------------------------------------------


class _CleanHelp:
    """Mixin for typer's command classes: plain docstrings, no value type shown for flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:  # type: ignore[attr-defined]
            self.help = plain(inspect.cleandoc(self.help))  # type: ignore[attr-defined]
        for param in self.params:  # type: ignore[attr-defined]
            # Settings' help is already plain (and carries its own dim markup); the rest is not.
            if getattr(param, "help", None) and not (param.name or "").startswith("setting_"):
                param.help = plain(param.help)

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # a flag takes no value: no "<bool>" beside it
        return params


class Command(_CleanHelp, typer.core.TyperCommand):
    """A pixelmill command (see :class:`App`)."""


class Group(_CleanHelp, typer.core.TyperGroup):
    """A pixelmill command group (see :class:`App`)."""


class App(typer.Typer):
    """``typer.Typer`` whose groups and commands use :class:`Group` and :class:`Command`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        kwargs.setdefault("add_completion", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)

    def callback(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Group)
        return super().callback(*args, **kwargs)

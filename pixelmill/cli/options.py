"""Expose every :class:`Settings` field as a typer option, documented by its docstring.

A command decorated with :func:`with_settings` gets ``--models-dir``, ``--port``, … for
free and receives a ready :class:`Settings` (flag > ``PIXELMILL_*`` variable > default).
Adding a field to ``Settings`` adds the flag; nothing is listed twice.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from pixelmill.settings import Settings, load_settings


def _option_type(annotation: Any) -> tuple[Any, str]:
    """A type typer understands for a settings annotation, plus a help suffix."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return str, f" [choices: {', '.join(map(str, args))}]"
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _option_type(args[0])
    if origin is list:
        return list[str], ""
    if annotation in (str, int, float, bool, Path):
        return annotation, ""
    return str, ""


def _settings_parameters() -> list[inspect.Parameter]:
    params = []
    for name, field in Settings.model_fields.items():
        kind, suffix = _option_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        help_text = (field.description or "").replace("\n", " ") + suffix
        option = typer.Option(*decls, help=help_text, envvar=None, show_default=False, rich_help_panel="Settings")
        params.append(
            inspect.Parameter(
                f"setting_{name}", inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[kind | None, option], default=None,
            )
        )
    return params


def with_settings(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a typer command taking ``settings: Settings`` with one flag per setting."""
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

    wrapper.__signature__ = inspect.Signature([*own, *_settings_parameters()])  # type: ignore[attr-defined]
    return wrapper

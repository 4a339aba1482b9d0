"""Run a throw-away command wrapped by ``with_settings``: what the flags turn into."""

from __future__ import annotations

import typer
from click.testing import Result
from typer.testing import CliRunner

from pixelmill.cli.options import with_settings
from pixelmill.settings import Settings


def settings_from_flags(args: list[str]) -> tuple[Result, Settings | None]:
    """Invoke a one-command app taking every setting as a flag with ``args``: the CLI result
    and the :class:`Settings` the command received (None when the flags were refused)."""
    seen: dict[str, Settings] = {}

    @with_settings
    def command(settings: Settings) -> None:
        seen["settings"] = settings

    app = typer.Typer()
    app.command()(command)
    result = CliRunner().invoke(app, args)
    return result, seen.get("settings")

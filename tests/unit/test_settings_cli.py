"""Every setting is a CLI flag and a PIXELMILL_* variable; flags win over the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pixelmill.cli import main as cli
from pixelmill.cli.options import with_settings
from pixelmill.settings import Settings, load_settings
from tests.support.cli import settings_from_flags

runner = CliRunner()


def test_environment_and_overrides(monkeypatch):
    monkeypatch.setenv("PIXELMILL_PORT", "9001")
    monkeypatch.setenv("PIXELMILL_MODELS_DIR", "/srv/models")
    assert load_settings().port == 9001
    assert load_settings().models_dir == Path("/srv/models")
    assert load_settings(port=9002, host=None).port == 9002


def test_defaults_are_safe():
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.model is None
    assert settings.result_retention_s == 3600


def test_every_setting_is_a_documented_serve_flag():
    import typer.main

    serve = typer.main.get_command(cli.app).commands["serve"]
    options = {opt: param for param in serve.params for opt in param.opts}
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        assert flag in options, flag
        assert options[flag].help, f"{flag} has no help text"


def test_flags_reach_settings(monkeypatch):
    monkeypatch.setenv("PIXELMILL_PORT", "9001")
    result, settings = settings_from_flags(["--port", "7000", "--offload", "model", "--compile", "--model-aliases", "x"])
    assert result.exit_code == 0, result.output
    assert (settings.port, settings.offload, settings.compile, settings.model_aliases) == (7000, "model", True, ["x"])


def test_invalid_flag_value_is_a_clear_error():
    result, settings = settings_from_flags(["--offload", "everything"])
    assert result.exit_code != 0 and settings is None
    assert "offload" in result.output


def test_serve_refuses_an_unknown_explicit_model(tmp_path):
    result = runner.invoke(cli.app, ["serve", "--model", "nope", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope" in result.output


def test_readme_test_command_is_what_ci_runs():
    root = Path(__file__).resolve().parents[2]
    ci = (root / ".ci" / "run").read_text()
    readme = (root / "README.md").read_text()
    command = "scripts/bootstrap.sh --test && .venv/bin/python -m pytest"
    assert command in ci and command in readme


def test_every_setting_is_in_exactly_one_help_section():
    from pixelmill.cli.options import SECTIONS

    named = [name for names in SECTIONS.values() for name in names]
    assert sorted(named) == sorted(Settings.model_fields), "add the new setting to a section in cli/options.py"


def test_with_settings_adds_only_the_named_settings():
    import typer.main

    from pixelmill.cli.options import expand

    @with_settings("Storage", "port")
    def command(settings: Settings) -> None:
        pass

    app = typer.Typer()
    app.command()(command)
    params = typer.main.get_command(app).params
    names = ("port", "data_dir", "db", "result_store", "result_retention_s")
    assert [p.name for p in params if p.name.startswith("setting_")] == [f"setting_{n}" for n in names]
    assert expand(["port", "Storage"]) == ["port", "data_dir", "db", "result_store", "result_retention_s"]
    with pytest.raises(ValueError, match="neither a settings section nor a setting"):
        expand(["Storge"])


def test_setting_help_is_plain_text_with_default_and_variable():
    from pixelmill.cli.options import plain, setting_help

    assert plain("e.g. ``https://app.example.com``, see :class:`~pixelmill.settings.Settings`") == (
        "e.g. https://app.example.com, see pixelmill.settings.Settings")
    text = setting_help("cors_origins")
    assert "https://app.example.com" in text and "``" not in text
    assert "default: none" in text and "PIXELMILL_CORS_ORIGINS, a JSON list" in text
    assert "PIXELMILL_MODEL]" in setting_help("model") and "default:" not in setting_help("model")

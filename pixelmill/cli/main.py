"""The ``pixelmill`` command: serve, worker, generate, demo-model, models.

Each command is a thin shell over the layers: ``serve`` builds the app, ``generate``
calls a server's native API (or an in-process engine), ``demo-model`` writes the
random-weight model, ``models`` lists the models directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from pixelmill import __version__
from pixelmill.cli.keys import app as keys_app
from pixelmill.cli.keys import check_bind_address
from pixelmill.cli.cost import cost_app
from pixelmill.cli.options import WORKER, App, with_settings
from pixelmill.observe.logs import configure_logging
from pixelmill.settings import Settings

app = App(
    help="pixelmill: self-hosted image generation with OpenAI-compatible APIs.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
app.add_typer(cost_app, name="cost")
app.add_typer(keys_app, name="keys")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pixelmill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """pixelmill: self-hosted image generation with OpenAI-compatible APIs."""


LogLevel = Literal["debug", "info", "warning", "error"]


def _configure_logging(level: str, settings: Settings) -> None:
    configure_logging(level, settings.log_format)  # text, or JSON lines with request and job ids


@app.command()
@with_settings
def serve(
    settings: Settings,
    log_level: Annotated[LogLevel, typer.Option(help="How much the log says.")] = "info",
) -> None:
    """Start the HTTP server (OpenAI Images API at /v1, docs at /docs).

    Exits 1 when the port is taken, or when a model named with --model / PIXELMILL_MODEL
    cannot be loaded (only the default model falls back to the demo model).
    """
    from pixelmill.cli.serve import port_problem, run_server

    _configure_logging(log_level, settings)
    source = _check_model_choice(settings)
    check_bind_address(settings)
    problem = port_problem(settings.host, settings.port)  # before anything starts: one line, no model load
    if problem:
        console.print(f"[red]error:[/] {problem}", soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    console.print(f"pixelmill {__version__}: http://{settings.host}:{settings.port}  (docs at /docs)")
    hub = source is not None and source.kind == "hub"
    raise typer.Exit(run_server(settings, log_level=log_level, hub_model=hub, console=console))


def _check_model_choice(settings: Settings):
    """Fail fast on a mistyped ``--model``: before the server starts, not in its log later.

    Returns the model's :class:`~pixelmill.engine.models.ModelSource` (None without ``--model``).
    """
    from pixelmill.engine.models import resolve_source
    from pixelmill.core.errors import PixelmillError
    from pixelmill.registry.models_dir import ModelRegistry

    if not settings.model:
        return None
    registry = ModelRegistry(settings.models_dir)
    registry.refresh()
    try:
        return resolve_source(settings.model, registry)
    except PixelmillError as exc:
        console.print(f"[red]error:[/] --model: {exc.message}")
        raise typer.Exit(2) from None


@app.command()
@with_settings(*WORKER)
def worker(
    settings: Settings,
    log_level: Annotated[LogLevel, typer.Option(help="How much the log says.")] = "info",
) -> None:
    """Run a worker: claim jobs from --db and generate them (no HTTP server).

    Shows the settings a worker reads; the others (network, limits, …) are the API
    server's, and a worker never uses them.
    """
    import asyncio

    from pixelmill.cli.worker import run_worker_process

    _configure_logging(log_level, settings)
    _check_model_choice(settings)
    raise typer.Exit(asyncio.run(run_worker_process(settings)))


@app.command("demo-model")
def demo_model(
    directory: Annotated[Path, typer.Argument(help="Models directory to write into.")],
    size: Annotated[str, typer.Option(help="tiny (tests, quick start) or bench (benchmarks).")] = "tiny",
    families: Annotated[str, typer.Option(help="Comma-separated families to write: sdxl, flux, sd3.")] = "sdxl,flux,sd3",
    force: Annotated[bool, typer.Option(help="Write them again even when the folder already holds them.")] = False,
) -> None:
    """Write the random-weight demo models: SDXL (plus refiner, LoRA, ControlNet), FLUX.1 dev and
    schnell, SD3.5 (each with a LoRA)."""
    if size not in ("tiny", "bench"):
        raise typer.BadParameter("size must be 'tiny' or 'bench'", param_hint="--size")
    chosen = tuple(f.strip().lower() for f in families.split(",") if f.strip())
    if not chosen or set(chosen) - {"sdxl", "flux", "sd3"}:
        raise typer.BadParameter("families must be a comma-separated subset of sdxl, flux, sd3", param_hint="--families")
    from pixelmill.engine.demo import demo_models_present, write_demo_models

    if not force and demo_models_present(directory, size, chosen):
        console.print(f"[green]already there[/] {directory}: the {size} demo models of {', '.join(chosen)} "
                      "(checked against their manifest; --force writes them again)")
        return
    with console.status(f"writing the {size} demo models to {directory}"):
        write_demo_models(directory, size=size, families=chosen)  # type: ignore[arg-type]
    written = {"sdxl": "checkpoints/demo, checkpoints/demo-refiner, loras/demo-style, controlnets/demo-canny",
               "flux": "checkpoints/demo-flux, checkpoints/demo-flux-schnell, loras/demo-flux-style",
               "sd3": "checkpoints/demo-sd3, loras/demo-sd3-style"}
    console.print(f"[green]wrote[/] {directory}: " + "; ".join(written[f] for f in chosen))
    first = {"sdxl": "demo", "flux": "demo-flux-schnell", "sd3": "demo-sd3"}[chosen[0]]
    console.print(f"serve it with: pixelmill serve --models-dir {directory} --model {first}")


@app.command()
@with_settings("models_dir")
def models(settings: Settings) -> None:
    """List the checkpoints, LoRAs and ControlNets in the models directory."""
    from pixelmill.registry.models_dir import ModelKind, ModelRegistry

    registry = ModelRegistry(settings.models_dir)
    registry.refresh()
    table = Table(title=f"models in {settings.models_dir}")
    for column in ("kind", "name", "format", "size"):
        table.add_column(column)
    for kind in ModelKind:
        for entry in registry.list(kind):
            fmt = "single file" if entry.single_file else "diffusers folder"
            table.add_row(entry.listed_kind, entry.name, fmt, f"{entry.size_bytes / 2**20:,.1f} MiB")
    Console().print(table)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", show_default=False,
        help="File to write (n>1: name-1.png, …); its suffix sets the format. Default: image.png "
             "(image.jpg, image.webp with --format).")] = None,
    server: Annotated[str | None, typer.Option(
        help="Server URL, e.g. http://gpu-box:8000 (a trailing /v1 is fine); without it, generate in this process.",
    )] = None,
    seed: Annotated[int, typer.Option(help="-1 = random.")] = -1,
    n: Annotated[int, typer.Option(help="Number of images.")] = 1,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT; default: the model's native size.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="CFG scale.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="e.g. euler_a, dpmpp_2m_karras.")] = None,
    negative_prompt: Annotated[str, typer.Option(help="What to avoid.")] = "",
    model: Annotated[str | None, typer.Option(help="Model name (default: the server's).")] = None,
    output_format: Annotated[Literal["png", "jpeg", "webp"] | None, typer.Option(
        "--format", show_default=False,
        help="Image format. Default: the --output suffix's, else png. Must match the suffix.")] = None,
    models_dir: Annotated[Path | None, typer.Option(help="Local mode: models directory.")] = None,
    api_key: Annotated[str | None, typer.Option(
        envvar="PIXELMILL_API_KEY", show_envvar=True,
        help="API key for --server (needed once the server has keys).")] = None,
) -> None:
    """Generate images with a progress bar; prints the seed used."""
    from pixelmill.cli.generate import GenerateOptions, run_generate

    options = GenerateOptions(
        prompt=prompt, output=output, seed=seed, n=n, size=size, steps=steps, guidance=guidance,
        scheduler=scheduler, negative_prompt=negative_prompt, model=model, output_format=output_format,
    )
    run_generate(options, server=server, models_dir=models_dir, api_key=api_key, console=console)


def main() -> None:
    """Entry point of the ``pixelmill`` script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()

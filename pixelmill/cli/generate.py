"""``pixelmill generate``: against a server (native API, SSE progress) or in-process.

Both paths build the same native request body and write the same files, so the CLI
behaves the same whether the engine runs here or on a GPU box. The output's suffix and
``--format`` must agree (a ``.png`` file never holds JPEG bytes), and ``--server`` takes
the URL the way OpenAI clients write it too (``…/v1``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass
class GenerateOptions:
    """What the user asked ``pixelmill generate`` for."""

    prompt: str
    output: Path | None = None
    """None: ``image.<format>``."""
    seed: int = -1
    n: int = 1
    size: str | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    negative_prompt: str = ""
    model: str | None = None
    output_format: str | None = None
    """None: the format the output's suffix names, else png."""

    def body(self) -> dict:
        """The native ``/v1/generate`` body for these options."""
        body = {
            "prompt": self.prompt, "seed": self.seed, "n": self.n, "steps": self.steps,
            "guidance": self.guidance, "scheduler": self.scheduler, "model": self.model,
            "negative_prompt": self.negative_prompt, "output_format": self.output_format,
        }
        if self.size:
            width, _, height = self.size.lower().partition("x")
            if not (width.isdigit() and height.isdigit()):
                raise typer.BadParameter("size must look like 1024x1024", param_hint="--size")
            body |= {"width": int(width), "height": int(height)}
        return {k: v for k, v in body.items() if v is not None}


SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
"""Output suffixes and the format each one means."""
_SUFFIX_OF = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def resolve_output(options: GenerateOptions) -> GenerateOptions:
    """Settle the output file and format so that the file's suffix says what it holds.

    ``-o x.jpg`` alone writes JPEG; ``--format webp`` alone writes ``image.webp``; a
    suffix that names another format than ``--format`` (or none pixelmill writes) is refused.
    """
    fmt, output = options.output_format, options.output
    if output is None:
        fmt = fmt or "png"
        return replace(options, output=Path("image" + _SUFFIX_OF[fmt]), output_format=fmt)
    suffix = output.suffix.lower()
    if suffix and suffix not in SUFFIXES:
        raise typer.BadParameter(f"{output.name}: pixelmill writes .png, .jpg or .webp files",
                                 param_hint="'-o' / '--output'")
    implied = SUFFIXES.get(suffix)
    if fmt and implied and fmt != implied:
        raise typer.BadParameter(
            f"--format {fmt} would write {fmt.upper()} bytes into {output.name}: "
            f"use -o {output.with_suffix(_SUFFIX_OF[fmt]).name}, or leave out --format to write {implied}",
            param_hint="'--format'")
    return replace(options, output_format=fmt or implied or "png")


def server_base(server: str) -> str:
    """The server's base URL: a scheme added if missing, a trailing ``/v1`` (OpenAI style) dropped."""
    base = server.strip().rstrip("/")
    if "://" not in base:
        base = "http://" + base
    return base.removesuffix("/v1").rstrip("/")


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
        TimeElapsedColumn(), console=console, transient=True,
    )


def _sse_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    event, data = "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


def _generate_remote(options: GenerateOptions, server: str, api_key: str | None, console: Console) -> dict:
    headers = {"Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    url = server_base(server) + "/v1/generate"
    with _progress_bar(console) as bar, httpx.stream(
        "POST", url, json=options.body(), headers=headers, timeout=httpx.Timeout(30, read=None)
    ) as response:
        if response.status_code != 200:
            _fail(console, _http_error(response, url, api_key))
        task = bar.add_task("generate", total=None)
        for event, data in _sse_events(response):
            if event == "progress":
                bar.update(task, completed=data["step"], total=data["total"])
            elif event == "result":
                return data
            elif event == "error":
                _fail(console, data.get("error", {}))
    _fail(console, {"message": "the server closed the stream without a result"})
    raise AssertionError("unreachable")


def _http_error(response: httpx.Response, url: str, api_key: str | None) -> dict:
    """The error of a refused request, with what to do about it where the CLI knows."""
    response.read()
    error: dict = {}
    if response.headers.get("content-type", "").startswith("application/json"):
        error = dict(response.json().get("error") or {})
    error.setdefault("message", response.text.strip()[:300] or f"HTTP {response.status_code}")
    if response.status_code == 401:
        given = "the key given (--api-key / PIXELMILL_API_KEY) was refused" if api_key else (
            "this server needs an API key: pass --api-key KEY or set PIXELMILL_API_KEY")
        error["message"] = f"{given} ({error['message']})"
    elif response.status_code == 404:
        error["message"] = (f"{url} does not exist: is --server the base URL of a pixelmill server, "
                            f"e.g. http://host:8000? ({error['message']})")
    return error


def _generate_local(options: GenerateOptions, models_dir: Path | None, console: Console) -> dict:
    from pixelmill.api.native.protocol import GenerationCreate
    from pixelmill.engine.engine import Engine
    from pixelmill.registry.models_dir import ModelRegistry
    from pixelmill.settings import load_settings
    from pixelmill.core.policy import prepare_request

    settings = load_settings(models_dir=models_dir, model=options.model)
    with console.status("loading the model"):
        engine = Engine(settings, ModelRegistry(settings.models_dir))
        engine.start()
    request = prepare_request(GenerationCreate(**options.body()).to_request(settings), settings)
    with _progress_bar(console) as bar:
        task = bar.add_task("generate", total=None)
        result = engine.generate(request, on_progress=lambda step, total: bar.update(task, completed=step, total=total))
    images = [
        {"b64_json": base64.b64encode(img.data).decode(), "seed": img.seed, "width": img.width, "height": img.height}
        for img in result.images
    ]
    return {"images": images, **result.model_dump(include={"seed", "model", "steps", "sampler"})}


def _fail(console: Console, error: dict) -> None:
    param = f" (parameter: {error['param']})" if error.get("param") else ""
    console.print(f"[red]error:[/] {error.get('message', 'unknown error')}{param}")
    raise typer.Exit(1)


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(count)]


def run_generate(options: GenerateOptions, *, server: str | None, models_dir: Path | None, api_key: str | None, console: Console) -> None:
    """Generate, write the files, and print each file with its seed."""
    from pixelmill.core.errors import PixelmillError

    options = resolve_output(options)  # before any work: a mismatched -o fails at once
    try:
        if server:
            result = _generate_remote(options, server, api_key, console)
        else:
            result = _generate_local(options, models_dir, console)
    except httpx.HTTPError as exc:
        _fail(console, {"message": f"could not reach {server}: {exc}"})
        return
    except PixelmillError as exc:
        _fail(console, {"message": exc.message, "param": exc.param})
        return
    assert options.output is not None  # resolve_output set it
    for path, image in zip(_output_paths(options.output, len(result["images"])), result["images"]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(image["b64_json"]))
        typer.echo(f"{path}  seed {image['seed']}  {image['width']}x{image['height']}")
    console.print(f"seed used: {result['seed']}  ({result['model']}, {result['steps']} steps, {result['sampler']})")

"""Every example in README.md runs, as written, against the quick-start server.

**Extraction.** The fenced ``bash`` and ``python`` blocks of README.md, in order. A block
right after a line ``<!-- readme-test: skip (reason) -->`` is not run; the reason is
required (the set-up commands themselves, servers on port 8000, benchmarks, re-locking).

**The server** is the quick start's, ``.venv/bin/pixelmill serve`` with nothing configured,
run in a scratch directory (so its data is ``.pixelmill`` there) offline, so it falls back
to the demo model as a machine without the SDXL weights does; only the port is a free one
(``PIXELMILL_PORT``), and ``127.0.0.1:8000`` in the examples becomes its address. The
scratch directory links ``.venv`` and ``docs`` to the repository's: the examples run "from
the repository root" without writing into it.

**Running.** The bash blocks run one after the other as one reader's shell would: with
``set -eo pipefail`` and the variables earlier blocks set (``$ID``, ``$KEY`` …). ``curl``
fails on an HTTP error status (``--fail-with-body``) unless the example passes ``--fail``
itself: ``curl -s`` alone exits 0 on a 404, which is exactly what broke unnoticed before.
Python blocks run with ``.venv/bin/python``. Each block must exit 0, and every image or ZIP
file it writes must decode (and the files it names with ``-o`` or ``open(..., "wb")`` must
exist). The demo model is tiny and the examples use 128×128 images with a few steps, so
the walk-through takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.server import free_port, subprocess_env, wait_healthy

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SKIP = re.compile(r"^<!-- readme-test: skip \((?P<reason>[^)].*)\) -->$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
BLOCK_TIMEOUT_S = 180
ASSIGNED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=", re.MULTILINE)
NAMED_OUTPUT = re.compile(r"""\s-o\s+(?P<flag>[\w.-]+\.(?:png|jpg|webp|zip))"""
                          r"""|open\("(?P<py>[\w.-]+\.(?:png|jpg|webp|zip))", "wb"\)""")
BASH_PRELUDE = r"""set -eo pipefail
curl() {  # fail on HTTP errors, unless the example chose --fail itself
  local arg
  for arg in "$@"; do
    case "$arg" in --fail|--fail-with-body|-[!-]*f*) command curl "$@"; return;; esac
  done
  command curl --fail-with-body "$@"
}
if [ -f "$README_STATE" ]; then source "$README_STATE"; fi
"""


@dataclass(frozen=True)
class Example:
    """One fenced block of README.md."""

    line: int  # where its fence opens (1-based)
    lang: str
    code: str
    skip: str | None  # the reason, when it is not run

    def outputs(self) -> list[str]:
        """The files the example says it writes (``-o NAME``, ``open("NAME", "wb")``)."""
        return [m.group("flag") or m.group("py") for m in NAMED_OUTPUT.finditer(self.code)]


def readme_examples(text: str) -> list[Example]:
    """The bash and python blocks of ``text`` in order; a dangling or reasonless marker is an error."""
    examples, skip, lines, i = [], None, text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!-- readme-test:"):
            match = SKIP.match(line)
            assert match and match["reason"].strip(), f"README.md:{i + 1}: <!-- readme-test: skip (why) -->"
            skip = (i + 1, match["reason"].strip())
        elif fence := FENCE.match(line):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if fence["lang"] in ("bash", "python"):
                if skip is not None:
                    assert skip[0] == i, f"README.md:{skip[0]}: a skip marker must stand right before its block"
                examples.append(Example(i + 1, fence["lang"], "\n".join(lines[i + 1:end]) + "\n",
                                        skip[1] if skip else None))
            else:
                kind = fence["lang"] or "plain"
                assert skip is None, f"README.md:{skip[0]}: a skip marker before a {kind} block"
            skip, i = None, end
        i += 1
    assert skip is None, f"README.md:{skip[0]}: a skip marker with no block after it"
    return examples


def for_server(code: str, url: str) -> str:
    """The example with the README's server address replaced by the test server's."""
    address = url.removeprefix("http://")
    return code.replace("127.0.0.1:8000", address).replace("localhost:8000", address)


def _files(folder: Path) -> dict[Path, tuple[int, int]]:
    """Files the examples may have written (not the linked repository folders, nor server data)."""
    found = {}
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if relative.parts[0] in (".venv", "docs", ".pixelmill", "models", ".readme") or not path.is_file():
            continue
        stat = path.stat()
        found[path] = (stat.st_mtime_ns, stat.st_size)
    return found


def _check_written(path: Path) -> None:
    data = path.read_bytes()
    if path.suffix in (".png", ".jpg", ".webp"):
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.width > 0 and image.height > 0, path
    elif path.suffix == ".zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.testzip() is None and "manifest.json" in archive.namelist(), path


def _env(scratch: Path, **extra: str) -> dict[str, str]:
    """Offline, with an empty Hugging Face cache: a new machine without the SDXL weights,
    whatever this one has cached, so the server falls back to the demo model."""
    return subprocess_env(HF_HOME=str(scratch / ".readme" / "hf-home"), **extra)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory):
    """The quick-start server in a scratch directory; yields (scratch, url)."""
    scratch = tmp_path_factory.mktemp("readme")
    for name in (".venv", "docs"):
        (scratch / name).symlink_to(REPO / name)
    (scratch / ".readme").mkdir()
    port = free_port()
    log = scratch / ".readme" / "server.log"
    with open(log, "wb") as out:
        # The README's first command, after bootstrap: `.venv/bin/pixelmill serve`, nothing configured.
        process = subprocess.Popen([str(scratch / ".venv" / "bin" / "pixelmill"), "serve"], cwd=scratch,
                                   env=_env(scratch, PIXELMILL_PORT=str(port)),
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, 180, log.read_text)
        yield scratch, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_skip_markers_give_reasons_and_most_examples_run():
    examples = readme_examples(README.read_text("utf-8"))
    skipped = [e for e in examples if e.skip]
    assert all(len(e.skip) > 10 for e in skipped), [(e.line, e.skip) for e in skipped]
    run = len(examples) - len(skipped)
    assert run > len(skipped) and run >= 10, f"most of the README's examples must run ({run} of {len(examples)})"


def test_the_quickstart_server_serves_everything_its_demo_wrote(quickstart):
    """The demo's LoRA, ControlNet and refiner are usable by name, not only the model."""
    scratch, url = quickstart
    health = httpx.get(f"{url}/health").json()
    assert (health["model"], health["demo"]) == ("demo", True)
    assert "demo-style" in [e["name"] for e in httpx.get(f"{url}/v1/loras").json()["data"]]
    assert "demo-canny" in [e["name"] for e in httpx.get(f"{url}/v1/controlnets").json()["data"]]
    models = {m["id"]: m["kind"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert models.get("demo-refiner") == "refiner" and models.get("demo") == "checkpoint"
    assert (scratch / ".pixelmill" / "demo-models" / ".pixelmill-manifest.json").is_file()


def test_every_readme_example_runs_against_the_quickstart_server(quickstart):
    scratch, url = quickstart
    state = scratch / ".readme" / "state.sh"
    env = _env(scratch, README_STATE=str(state))
    timings = []
    for number, example in enumerate(readme_examples(README.read_text("utf-8"))):
        if example.skip:
            continue
        code = for_server(example.code, url)
        before = _files(scratch)
        script = scratch / ".readme" / f"example-{number:02d}.{'sh' if example.lang == 'bash' else 'py'}"
        if example.lang == "bash":
            names = sorted(set(ASSIGNED.findall(code)))
            keep = f'declare -p {" ".join(names)} >> "$README_STATE"\n' if names else ""
            script.write_text(BASH_PRELUDE + code + keep)
            command = ["bash", str(script)]
        else:
            script.write_text(code)
            command = [str(scratch / ".venv" / "bin" / "python"), str(script)]
        started = time.monotonic()
        try:
            done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True,
                                  timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"README.md:{example.line}: still running after {BLOCK_TIMEOUT_S} s\n{code}\n{exc.stdout}")
        timings.append((example.line, time.monotonic() - started))
        assert done.returncode == 0, (
            f"README.md:{example.line} ({example.lang}) exited {done.returncode}:\n{code}\n"
            f"--- stdout (last 3000 characters)\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}\n"
            f"--- server log (last 3000 characters)\n{(scratch / '.readme' / 'server.log').read_text()[-3000:]}")
        after = _files(scratch)
        for path, signature in after.items():
            if before.get(path) != signature:
                _check_written(path)
        for name in example.outputs():
            assert (scratch / name) in after and after[scratch / name] != before.get(scratch / name), (
                f"README.md:{example.line} did not write {name}")
    print("\nREADME examples (line: seconds): " + ", ".join(f"{line}: {s:.1f}" for line, s in timings)
          + f"; total {sum(s for _, s in timings):.0f} s")


def test_for_server_rewrites_every_spelling_of_the_readme_address():
    code = "curl -s http://127.0.0.1:8000/v1/models localhost:8000/x 'http://127.0.0.1:8000/v1/jobs?limit=2'"
    assert for_server(code, "http://127.0.0.1:5") == (
        "curl -s http://127.0.0.1:5/v1/models 127.0.0.1:5/x 'http://127.0.0.1:5/v1/jobs?limit=2'")

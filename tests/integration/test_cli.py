"""The pixelmill command as a user runs it, in fresh processes."""

from __future__ import annotations

import re
import subprocess
import sys

from pixelmill import __version__
from tests.support.images import decode
from tests.support.server import subprocess_env


def pixelmill(*args: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pixelmill.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(**env), timeout=300, cwd=cwd)


def help_text(*command: str) -> str:
    """``--help`` of ``command``, wide enough that no help line wraps."""
    done = pixelmill(*command, "--help", COLUMNS="250")
    assert done.returncode == 0, done.stderr
    return done.stdout


def options(text: str) -> list[str]:
    """The long options a help page lists."""
    return re.findall(r"^│\s*(?:\*\s+)?(--[a-z][a-z0-9-]*)", text, re.MULTILINE)


def test_demo_model_then_models_lists_it(tmp_path):
    done = pixelmill("demo-model", str(tmp_path / "models"))
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    # Writing random weights prints what was written, not the libraries' chatter.
    assert "torchvision" not in output and "Writing model shards" not in output, output
    listing = pixelmill("models", "--models-dir", str(tmp_path / "models"))
    assert listing.returncode == 0, listing.stderr
    for name in ("demo", "demo-style", "demo-canny"):
        assert name in listing.stdout
    # Again: nothing to write (the manifest says they are there, whole: tests/unit/engine/test_demo_model.py
    # covers an incomplete folder).
    manifest = tmp_path / "models" / ".pixelmill-manifest.json"
    written_at = manifest.stat().st_mtime_ns
    again = pixelmill("demo-model", str(tmp_path / "models"), "--families", "sdxl,flux", COLUMNS="250")
    assert again.returncode == 0 and "already there" in again.stderr, again.stdout + again.stderr
    assert manifest.stat().st_mtime_ns == written_at


def test_generate_in_process(demo_models, tmp_path):
    out = tmp_path / "cat.webp"
    done = pixelmill(
        "generate", "a cat", "--models-dir", str(demo_models), "--model", "demo", "--seed", "11",
        "--size", "64x64", "--steps", "2", "--n", "2", "--format", "webp", "-o", str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "seed used: 11" in done.stderr
    images = [decode((tmp_path / name).read_bytes()) for name in ("cat-1.webp", "cat-2.webp")]
    assert [image.format for image in images] == ["WEBP", "WEBP"]


def test_version():
    done = pixelmill("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"pixelmill {__version__}"


def test_serve_help_groups_settings_with_defaults_and_variables():
    text = help_text("serve")
    [port] = [line for line in text.splitlines() if "--port " in line]
    assert "[default: 8000]" in port and "[env var: PIXELMILL_PORT]" in port
    [host] = [line for line in text.splitlines() if "--host " in line]
    assert "[default: 127.0.0.1]" in host and "PIXELMILL_HOST" in host
    for panel in ("Network", "Storage", "Models", "Device", "Workers", "Request limits", "Cost"):
        assert re.search(rf"╭─ {panel} ─", text), panel
    assert "``" not in text and "<bool>" not in text  # no reference markup; flags show no value type
    assert "https://app.example.com" in text  # ``…`` rendered, not dropped
    assert not {"--name", "--scope", "--max-running"} & set(options(text))  # keys create's own options


def test_each_command_lists_only_the_settings_it_reads():
    worker = set(options(help_text("worker")))
    assert {"--db", "--models-dir", "--device", "--lease-s", "--webhook-secret"} <= worker
    assert not {"--port", "--host", "--cors-origins", "--max-side", "--cost-gpu-hour", "--insecure-no-auth"} & worker
    keys = options(help_text("keys", "create"))
    assert sorted(keys) == ["--data-dir", "--db", "--help", "--max-running", "--name", "--rate", "--scope"]
    assert sorted(options(help_text("models"))) == ["--help", "--models-dir"]
    report = set(options(help_text("cost", "report")))
    assert {"--db", "--cost-gpu-hour", "--config"} <= report and "--port" not in report
    assert "[self_hosted]" in help_text("cost", "report")  # help text is not taken for rich markup


def test_keys_list_shows_whole_ids(tmp_path):
    created = pixelmill("keys", "create", "--name", "a-rather-long-team-name", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    key_id = re.search(r"created (key_\S+)", created.stderr).group(1)
    listed = pixelmill("keys", "list", "--data-dir", str(tmp_path), COLUMNS="80")
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout, listed.stdout


def test_generate_against_a_server_url_ending_in_v1(server, tmp_path):
    out = tmp_path / "cat.png"
    done = pixelmill("generate", "a cat", "--server", f"{server.url}/v1/", "--size", "64x64", "--steps", "2",
                     "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert decode(out.read_bytes()).format == "PNG"


def test_generate_output_suffix_and_format_agree(server, tmp_path):
    refused = pixelmill("generate", "a cat", "--server", server.url, "--format", "jpeg",
                        "-o", str(tmp_path / "x.png"))
    assert refused.returncode == 2 and not (tmp_path / "x.png").exists()
    message = " ".join(refused.stderr.replace("│", " ").split())
    assert "--format jpeg would write JPEG bytes into x.png" in message and "x.jpg" in message
    jpeg = pixelmill("generate", "a cat", "--server", server.url, "--size", "64x64", "--steps", "2",
                     "-o", str(tmp_path / "y.jpg"))  # no --format: the suffix says JPEG
    assert jpeg.returncode == 0, jpeg.stderr
    assert decode((tmp_path / "y.jpg").read_bytes()).format == "JPEG"
    webp = pixelmill("generate", "a cat", "--server", server.url, "--size", "64x64", "--steps", "2",
                     "--format", "webp", cwd=tmp_path)  # no -o: image.webp, not WebP in image.png
    assert webp.returncode == 0, webp.stderr
    assert decode((tmp_path / "image.webp").read_bytes()).format == "WEBP" and not (tmp_path / "image.png").exists()


def test_generate_without_a_key_says_how_to_give_one(keyed, tmp_path):
    server, keys = keyed
    done = pixelmill("generate", "a cat", "--server", server.url, "-o", str(tmp_path / "x.png"))
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "--api-key" in message and "PIXELMILL_API_KEY" in message
    with_key = pixelmill("generate", "a cat", "--server", server.url, "--size", "64x64", "--steps", "2",
                         "-o", str(tmp_path / "y.png"), PIXELMILL_API_KEY=keys["user"])
    assert with_key.returncode == 0, with_key.stderr


def test_demo_fallback_message_says_what_happened_without_a_stack_trace():
    from pixelmill.engine.load_errors import fallback_message

    hub = ("cannot load model 'stabilityai/stable-diffusion-xl-base-1.0': OSError: Cannot load model "
           "stabilityai/stable-diffusion-xl-base-1.0: the model is not fully cached locally (Cannot find an "
           "appropriate cached snapshot folder ...) and an error occurred while trying to fetch metadata from "
           "the Hub. Please check out the root cause in the stacktrace above.")
    message = fallback_message("stabilityai/stable-diffusion-xl-base-1.0", hub)
    assert len(message.splitlines()) <= 2 and "stacktrace" not in message.lower()
    assert "not in the Hugging Face cache" in message and "--model / PIXELMILL_MODEL" in message
    other = fallback_message("a/b", "cannot load model 'a/b': RuntimeError: size mismatch. See the traceback above.")
    assert "size mismatch" in other and "traceback" not in other.lower()

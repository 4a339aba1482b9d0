"""The pixelmill command as a user runs it, in fresh processes."""

from __future__ import annotations

import subprocess
import sys

from tests.support.images import decode
from tests.support.server import subprocess_env


def pixelmill(*args: str, cwd=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pixelmill.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300, cwd=cwd)


def test_demo_model_then_models_lists_it(tmp_path):
    done = pixelmill("demo-model", str(tmp_path / "models"))
    assert done.returncode == 0, done.stderr
    listing = pixelmill("models", "--models-dir", str(tmp_path / "models"))
    assert listing.returncode == 0, listing.stderr
    for name in ("demo", "demo-style", "demo-canny"):
        assert name in listing.stdout


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

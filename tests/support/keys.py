"""API keys for tests, created the way an operator does: with ``pixelmill keys create``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.server import subprocess_env


def pixelmill(*args: str) -> subprocess.CompletedProcess:
    """Run the ``pixelmill`` command in a fresh process."""
    command = [sys.executable, "-m", "pixelmill.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=120)


def create_key(data_dir: Path, name: str, *options: str) -> str:
    """A new key in the job store under ``data_dir``; returns the secret (printed once)."""
    done = pixelmill("keys", "create", "--name", name, "--data-dir", str(data_dir), *options)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()

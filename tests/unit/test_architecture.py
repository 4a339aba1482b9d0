"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml) pass.

A broken contract fails the suite, and so CI, with import-linter's report naming the import
chain that crossed a layer.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports() -> str:
    # The console script next to this interpreter, so the check runs in the locked environment.
    script = Path(sys.executable).with_name("lint-imports")
    return str(script) if script.exists() else shutil.which("lint-imports") or "lint-imports"


def test_import_contracts_are_kept():
    run = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout
    assert "Contracts: 6 kept, 0 broken." in run.stdout


def test_a_forbidden_import_is_caught(tmp_path):
    """The contracts are live: a copy of the package whose API imports the engine fails them."""
    shutil.copytree(ROOT / "pixelmill", tmp_path / "pixelmill", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "pixelmill" / "api" / "sneaky.py"
    bad.write_text('"""Reaches into the engine."""\n\nfrom pixelmill.engine import device  # noqa: F401\n')
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([_lint_imports(), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode != 0
    assert "pixelmill.api.sneaky -> pixelmill.engine.device" in run.stdout

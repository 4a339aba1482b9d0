"""The servers under test, each a real process on a free loopback port.

pixelmill runs through the test suite's :class:`tests.support.server.ServerProcess`
(``pixelmill serve`` exactly as a user starts it); the tutorial-style reference server
gets a small equivalent here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from tests.support.server import ServerProcess, free_port, subprocess_env

ROOT = Path(__file__).resolve().parent.parent


class ReferenceProcess:
    """``python -m bench.reference_server`` in a subprocess; ready once ``/health`` answers."""

    def __init__(self, workdir: Path, model_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"reference-{self.port}.log"
        self.command = [sys.executable, "-m", "bench.reference_server", "--model-dir", str(model_dir),
                        "--port", str(self.port)]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "ReferenceProcess":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=subprocess_env(),
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: a broken server fails the run, not hangs it
            if self.process.poll() is not None:
                raise RuntimeError(f"reference server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("reference server not ready")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def reference_server(workdir: Path, models_dir: Path) -> Iterator[ReferenceProcess]:
    server = ReferenceProcess(workdir, models_dir / "checkpoints" / "demo").start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def pixelmill_server(workdir: Path, models_dir: Path, *extra: str) -> Iterator[ServerProcess]:
    """``pixelmill serve --model demo --models-dir MODELS`` with default batching settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(workdir, "--models-dir", str(models_dir), "--model", "demo", *extra,
                           env=subprocess_env()).start()
    try:
        yield server
    finally:
        server.stop()


def auth_headers(server: ServerProcess, api_key: str | None) -> dict[str, str]:
    """Headers that get a generation accepted: none while the loopback server is open.

    If the server answers 401 (auth enforced by default), a key is created with
    ``pixelmill keys create`` against the server's own data dir, as an operator would.
    """
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    probe = httpx.get(f"{server.url}/v1/jobs?limit=1", timeout=10)
    if probe.status_code != 401:
        return {}
    data_dir = server.args[server.args.index("--data-dir") + 1]
    db = server.args[server.args.index("--db") + 1] if "--db" in server.args else None
    command = [sys.executable, "-m", "pixelmill.cli", "keys", "create", "--name", "bench",
               "--data-dir", data_dir, *(["--db", db] if db else [])]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    match = re.search(r"pm_[A-Za-z0-9_\-]+", done.stdout)
    if match is None:
        raise RuntimeError(f"server needs a key and `pixelmill keys create` gave none:\n{done.stderr}")
    return {"Authorization": f"Bearer {match.group(0)}"}

"""Run ``pixelmill serve`` as a real process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment every server and CLI process in the tests gets: offline, quiet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}
    env |= {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    return env | extra


def wait_healthy(url: str, process: subprocess.Popen, timeout: float, log) -> None:
    """Return once ``url``'s ``/health`` answers 200; raise with ``log()`` if the process exits
    (RuntimeError) or ``timeout`` seconds pass (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server not ready after {timeout} s:\n{log()}")


class ServerProcess:
    """``pixelmill serve`` in a subprocess; ``url`` once ``/health`` says ready."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{self.port}.log"
        self.args = ["--port", str(self.port), "--data-dir", str(workdir / "data"), *args]
        self.env = env or subprocess_env()
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "ServerProcess":
        command = [sys.executable, "-m", "pixelmill.cli", "serve", *self.args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        try:
            wait_healthy(self.url, self.process, timeout, self.log)
        except TimeoutError:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class WorkerProcess:
    """``pixelmill worker`` (or a fake worker module) in a subprocess with its own directory."""

    def __init__(self, workdir: Path, *args: str, module: str | None = None, env: dict[str, str] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.log_path = workdir / "worker.log"
        if module:
            self.command = [sys.executable, "-m", module]
        else:
            self.command = [sys.executable, "-m", "pixelmill.cli", "worker", "--data-dir", str(workdir / "data"), *args]
        self.env = env or subprocess_env()
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 120) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while "ready" not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready:\n{self.log()}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to clean up."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else 0

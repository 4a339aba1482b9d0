"""Fixtures shared by all suites: the tiny demo model and a real pixelmill server.

No test downloads weights: ``HF_HUB_OFFLINE=1`` is set before anything imports the
Hugging Face libraries, and the models come from ``pixelmill demo-model``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist, share the cores between the worker processes (and the servers they
# start) instead of every torch process using all of them: oversubscribed threads make the
# CPU-bound model tests slower than running them one after another.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.support.server import ServerProcess  # noqa: E402

WEBHOOK_SECRET = "test-webhook-secret"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the default addopts): one worker per core, plus one.

    A fifth of the suite's time is waiting, not computing: on server processes starting,
    leases running out in the crash tests, arrivals spaced in time. An extra worker fills
    those gaps (bench/RESULTS.md, "Test suite": on 2 cores, 2 workers kept the CPUs 168 %
    busy, 3 workers 182 %).
    """
    return (os.cpu_count() or 1) + 1


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the tiny demo model, its LoRA and its ControlNet."""
    from pixelmill.engine.demo import write_demo_models

    root = tmp_path_factory.mktemp("models")
    write_demo_models(root, size="tiny")
    return root


@pytest.fixture(scope="session")
def server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``pixelmill serve`` process on loopback serving the demo model."""
    workdir = tmp_path_factory.mktemp("server")
    proc = ServerProcess(
        workdir, "--models-dir", str(demo_models), "--model", "demo", "--default-steps", "2",
        "--webhook-allow-private", "--webhook-secret", WEBHOOK_SECRET,
        "--progress-interval-s", "0.1",  # fine-grained progress for the SSE tests
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def keyed(demo_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with a generate key and an admin key created before it started."""
    from tests.support.keys import create_key

    workdir = tmp_path_factory.mktemp("keyed")
    data = workdir / "data"
    keys = {"user": create_key(data, "team-a"), "admin": create_key(data, "root", "--scope", "admin")}
    proc = ServerProcess(workdir, "--models-dir", str(demo_models), "--model", "demo", "--default-steps", "2")
    proc.start()
    yield proc, keys
    proc.stop()

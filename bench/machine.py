"""What machine a result came from, and waiting for it to be quiet enough to measure."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    """The facts a reader needs to compare two RESULTS.md entries."""

    cpu: str
    cores: int
    ram_gib: float
    torch: str
    diffusers: str
    python: str
    commit: str
    date: str

    def lines(self) -> list[str]:
        return [
            f"CPU: {self.cpu}, {self.cores} cores; RAM {self.ram_gib:.1f} GiB",
            f"torch {self.torch}, diffusers {self.diffusers}, Python {self.python}",
            f"commit {self.commit}; date {self.date}",
        ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _commit() -> str:
    """HEAD and whether the work tree differs from it (read-only git commands)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


def machine() -> Machine:
    """Describe this machine and software stack."""
    import diffusers
    import torch

    return Machine(
        cpu=_cpu_model(), cores=os.cpu_count() or 1, ram_gib=_ram_gib(), torch=torch.__version__,
        diffusers=diffusers.__version__, python=sys.version.split()[0], commit=_commit(),
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def loadavg() -> str:
    """``/proc/loadavg``'s three load averages, as written there."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def one_minute_load() -> float:
    try:
        return float(loadavg().split()[0])
    except ValueError:
        return 0.0


def wait_until_quiet(threshold: float, max_wait_s: float, step_s: float = 60.0) -> bool:
    """Sleep in ``step_s`` steps until the 1-minute load is at most ``threshold``.

    Other people's test suites share this machine; numbers taken while they run say
    more about them than about pixelmill. Gives up after ``max_wait_s``; returns
    whether the machine was quiet in the end.
    """
    deadline = time.monotonic() + max_wait_s
    while one_minute_load() > threshold:
        if time.monotonic() + step_s > deadline:
            return False
        print(f"  load average {loadavg()} > {threshold}: waiting {step_s:.0f} s", flush=True)
        time.sleep(step_s)
    return True


def append_section(path: Path, name: str, text: str) -> None:
    """Append ``text`` to ``path`` (e.g. bench/RESULTS.md) under a ``## name — date`` heading."""
    with path.open("a") as out:
        out.write(f"\n## {name} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{text}\n")

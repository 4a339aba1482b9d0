"""The locks in locks/ fit pyproject.toml, and the tests run in the locked environment.

* Every requirement of ``[project].dependencies`` is pinned in locks/server.txt and
  locks/test.txt, and every one of the ``test`` extra in locks/test.txt, at a version inside
  its range (torch is pinned in locks/torch.txt instead; scripts/lock.sh keeps it out of the
  others). Markers are read for the platform the locks are made for (scripts/lock.sh's
  Python on Linux x86_64): a requirement that does not apply there need not be pinned.
* Every package pinned in locks/test.txt is installed at exactly that version, and torch at
  the version of locks/torch.txt (any build of it: +cpu, +cu128, ...).

The last three tests show the checks are live: a pin moved out of its range, a missing pin,
an installed version that differs from its pin, and markers are all read as meant.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pyproject.toml's tomli dependency covers Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "locks"
TORCH = canonicalize_name("torch")

Lock = dict[NormalizedName, Requirement]


def parse_lock(text: str, source: str = "lock") -> Lock:
    """``name -> requirement`` of a pip requirements file whose entries are all ``name==version``."""
    pins: Lock = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line or line.startswith("-"):  # comments, blank lines, pip options
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, \
            f"{source}:{number}: {line!r} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{source}:{number}: {req.name} is pinned twice"
        pins[name] = req
    return pins


def read_lock(name: str) -> Lock:
    return parse_lock((LOCKS / name).read_text(), f"locks/{name}")


def pinned(req: Requirement) -> Version:
    return Version(next(iter(req.specifier)).version)


def lock_python() -> str:
    """The Python version scripts/lock.sh resolves for (``PY=3.11``)."""
    found = re.search(r"^PY=([0-9.]+)\s*$", (ROOT / "scripts" / "lock.sh").read_text(), re.MULTILINE)
    assert found, "scripts/lock.sh no longer sets PY=<version>"
    return found.group(1)


def lock_environment() -> dict[str, str]:
    """Marker values for the platform the locks are made for."""
    python = lock_python()
    return {
        "python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "os_name": "posix", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "extra": "",
    }


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def dependencies() -> list[Requirement]:
    return [Requirement(line) for line in project()["dependencies"]]


def extra_requirements(extra: str = "test") -> list[Requirement]:
    return [Requirement(line) for line in project()["optional-dependencies"][extra]]


def range_problems(requirements: list[Requirement], lock: Lock, lock_name: str, *,
                   extra: str = "") -> list[str]:
    """What is wrong with how ``lock`` pins ``requirements`` (torch aside)."""
    env = lock_environment() | {"extra": extra}
    problems = []
    for req in requirements:
        name = canonicalize_name(req.name)
        if name == TORCH:
            continue
        if req.marker is not None and not req.marker.evaluate(env):
            continue  # does not apply where the locks are used: nothing to pin
        pin = lock.get(name)
        if pin is None:
            problems.append(f"{req} is not pinned in {lock_name}")
            continue
        if not req.specifier.contains(pinned(pin), prereleases=True):
            problems.append(f"{lock_name} pins {pin}, outside {req}")
        if not req.extras <= pin.extras:
            problems.append(f"{lock_name} pins {pin} without the extras of {req}")
    return problems


def environment_problems(lock: Lock, lock_name: str, installed=importlib.metadata.version) -> list[str]:
    """Packages of ``lock`` (that apply to this interpreter) not installed at their pinned version."""
    problems = []
    for name, pin in sorted(lock.items()):
        if pin.marker is not None and not pin.marker.evaluate():
            continue
        try:
            have = installed(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{pin} is not installed")
            continue
        if Version(have) != pinned(pin):
            problems.append(f"{pin} is locked but {name} {have} is installed")
    return problems


def torch_pin() -> Requirement:
    lock = read_lock("torch.txt")
    assert list(lock) == [TORCH], "locks/torch.txt pins torch and nothing else"
    return lock[TORCH]


# --- the locks fit pyproject.toml ------------------------------------------------------------


def test_server_dependencies_are_pinned_within_their_ranges_in_both_locks():
    problems = range_problems(dependencies(), read_lock("server.txt"), "locks/server.txt")
    problems += range_problems(dependencies(), read_lock("test.txt"), "locks/test.txt")
    assert not problems, "\n".join(problems) + "\n(run scripts/lock.sh)"


def test_test_extra_is_pinned_within_its_ranges_in_the_test_lock():
    problems = range_problems(extra_requirements(), read_lock("test.txt"), "locks/test.txt", extra="test")
    assert not problems, "\n".join(problems) + "\n(run scripts/lock.sh)"


def test_torch_is_pinned_in_its_own_lock_within_its_range():
    torch = next(req for req in dependencies() if canonicalize_name(req.name) == TORCH)
    pin = torch_pin()
    assert torch.specifier.contains(pinned(pin), prereleases=True), f"locks/torch.txt pins {pin}, outside {torch}"
    assert not pinned(pin).local, "locks/torch.txt pins the version; bootstrap picks the build"
    for name in ("server.txt", "test.txt"):
        assert TORCH not in read_lock(name), f"locks/{name} pins torch: bootstrap installs it from locks/torch.txt"


def test_the_test_lock_pins_what_the_server_lock_pins_at_the_same_versions():
    """locks/test.txt is resolved under the constraint of locks/server.txt: a superset of it."""
    server, test = read_lock("server.txt"), read_lock("test.txt")
    differ = [f"{pin} in locks/server.txt, {test.get(name)} in locks/test.txt"
              for name, pin in server.items() if test.get(name) is None or pinned(test[name]) != pinned(pin)]
    assert not differ, "\n".join(differ)


# --- the tests run in the locked environment --------------------------------------------------


def test_every_package_of_the_test_lock_is_installed_at_its_pinned_version():
    problems = environment_problems(read_lock("test.txt"), "locks/test.txt")
    assert not problems, "\n".join(problems) + "\n(reinstall: scripts/bootstrap.sh --test)"


def test_torch_is_installed_at_the_locked_version():
    have = Version(importlib.metadata.version("torch"))
    want = pinned(torch_pin())
    assert Version(have.base_version) == want, f"torch {have} is installed, locks/torch.txt pins {want}"


# --- the checks are live ----------------------------------------------------------------------


def test_a_pin_outside_its_range_is_reported():
    text = (LOCKS / "test.txt").read_text()
    assert re.search(r"^diffusers==", text, re.MULTILINE)
    moved = parse_lock(re.sub(r"^diffusers==\S+", "diffusers==0.30.0", text, flags=re.MULTILINE))
    assert range_problems(dependencies(), moved, "locks/test.txt") == \
        ["locks/test.txt pins diffusers==0.30.0, outside diffusers>=0.35"]
    dropped = parse_lock(re.sub(r"^pytest==\S+", "", text, flags=re.MULTILINE))
    assert range_problems(extra_requirements(), dropped, "locks/test.txt", extra="test") == \
        ["pytest>=8 is not pinned in locks/test.txt"]


def test_an_installed_version_that_differs_from_its_pin_is_reported():
    lock = parse_lock(f"packaging=={importlib.metadata.version('packaging')}\npytest==1.0\n"
                      "surely-not-installed-pm==1.0\n")
    assert environment_problems(lock, "lock") == [
        f"pytest==1.0 is locked but pytest {importlib.metadata.version('pytest')} is installed",
        "surely-not-installed-pm==1.0 is not installed",
    ]


def test_markers_are_read_for_the_locks_platform():
    """Like tomli (wanted below Python 3.11): a requirement for other Pythons needs no pin."""
    python = lock_python()
    below, at = (Requirement(f"tomli>=2.0; python_version {op} '{python}'") for op in ("<", ">="))
    assert range_problems([below], {}, "lock") == []
    assert range_problems([below], parse_lock("tomli==1.0"), "lock") == []  # pinned for another reason
    assert range_problems([at], {}, "lock") == [f"{at} is not pinned in lock"]
    assert range_problems([at], parse_lock("tomli==1.0"), "lock") == [f"lock pins tomli==1.0, outside {at}"]


def test_the_installer_is_pinned_once_and_both_scripts_read_that_pin():
    """bootstrap.sh installs with uv and lock.sh resolves with it: one pin, locks/uv.txt."""
    pins = read_lock("uv.txt")
    assert list(pins) == [canonicalize_name("uv")], "locks/uv.txt pins uv and nothing else"
    version = str(pinned(pins[canonicalize_name("uv")]))
    for script in ("bootstrap.sh", "lock.sh"):
        text = (ROOT / "scripts" / script).read_text()
        assert "locks/uv.txt" in text, f"scripts/{script} does not read locks/uv.txt"
        assert version not in text, f"scripts/{script} repeats the uv version instead of reading locks/uv.txt"

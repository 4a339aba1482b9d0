"""The models directory: names → files, strictly inside their folders.

Layout::

    models/
      checkpoints/<name>/              diffusers folder (has model_index.json)
      checkpoints/<name>.safetensors   single-file SDXL checkpoint
      loras/<name>.safetensors
      controlnets/<name>/              diffusers folder

A name is a plain identifier. It is resolved inside its kind's folder and refused
when it could point anywhere else (``..``, separators, absolute paths, symlinks that
leave the folder). Pickle formats (``.ckpt``, ``.pt``, ``.bin``, ``.pth``) are never
opened: they can run code when loaded. This module does not import diffusers.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from pixelmill.errors import InvalidRequest, NotFound

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})


class ModelKind(str, enum.Enum):
    """Kinds of things a models directory holds, with the folder each lives in."""

    checkpoint = "checkpoints"
    lora = "loras"
    controlnet = "controlnets"


@dataclass(frozen=True)
class ModelEntry:
    """One usable model file or folder found in the models directory."""

    name: str
    kind: ModelKind
    path: Path
    single_file: bool
    size_bytes: int


def check_name(name: str, *, param: str) -> str:
    """Refuse anything that is not a plain identifier (before touching the filesystem)."""
    if not NAME_PATTERN.fullmatch(name or "") or ".." in name:
        raise InvalidRequest(
            f"{name!r} is not a valid name: use letters, digits, '.', '_' and '-' only",
            param=param,
        )
    return name


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` (symlinks resolved) stays inside ``folder`` (resolved)."""
    try:
        path.resolve(strict=True).relative_to(folder.resolve(strict=True))
    except (OSError, ValueError):
        return False
    return True


def _is_diffusers_folder(path: Path, kind: ModelKind) -> bool:
    marker = "model_index.json" if kind is ModelKind.checkpoint else "config.json"
    if not (path / marker).is_file():
        return False
    # A folder whose weights are only pickles is as dangerous as a .ckpt file.
    return any(path.rglob("*.safetensors"))


class ModelRegistry:
    """Scans a models directory and resolves names of checkpoints, LoRAs and ControlNets."""

    def __init__(self, root: Path):
        self.root = root
        self._entries: dict[tuple[ModelKind, str], ModelEntry] = {}

    def refresh(self) -> None:
        """Re-scan the directory (at start and on demand)."""
        entries: dict[tuple[ModelKind, str], ModelEntry] = {}
        for kind in ModelKind:
            for entry in self._scan(kind):
                entries[(kind, entry.name)] = entry
        self._entries = entries

    def _scan(self, kind: ModelKind) -> list[ModelEntry]:
        folder = self.root / kind.value
        if not folder.is_dir():
            return []
        found = []
        for child in sorted(folder.iterdir()):
            entry = self._entry_for(kind, folder, child)
            if entry is not None:
                found.append(entry)
        return found

    @staticmethod
    def _entry_for(kind: ModelKind, folder: Path, child: Path) -> ModelEntry | None:
        if not _inside(child, folder) or child.suffix.lower() in PICKLE_SUFFIXES:
            return None
        if child.is_file() and child.suffix == ".safetensors":
            if kind is ModelKind.controlnet:
                return None
            name = child.name[: -len(".safetensors")]
            single = True
        elif child.is_dir() and _is_diffusers_folder(child, kind) and kind is not ModelKind.lora:
            name, single = child.name, False
        else:
            return None
        if not NAME_PATTERN.fullmatch(name):
            return None
        return ModelEntry(name, kind, child, single, _size_of(child))

    def list(self, kind: ModelKind) -> list[ModelEntry]:
        """Entries of one kind, sorted by name."""
        return sorted((e for (k, _), e in self._entries.items() if k is kind), key=lambda e: e.name)

    def find(self, kind: ModelKind, name: str) -> ModelEntry | None:
        """The entry called ``name``, or None; never looks outside the scanned folder."""
        return self._entries.get((kind, name))

    def resolve(self, kind: ModelKind, name: str, *, param: str) -> ModelEntry:
        """The entry called ``name``; :class:`NotFound` naming ``param`` otherwise.

        The path is re-checked at resolution time, so a symlink swapped in after the
        scan cannot lead outside the folder.
        """
        check_name(name, param=param)
        entry = self.find(kind, name)
        if entry is None:
            known = ", ".join(e.name for e in self.list(kind)) or "none"
            raise NotFound(f"no {kind.name} named {name!r} (available: {known})", param=param)
        if not _inside(entry.path, self.root / kind.value):
            raise InvalidRequest(f"{kind.name} {name!r} points outside its folder", param=param)
        return entry

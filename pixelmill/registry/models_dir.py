"""The models directory: names → files, strictly inside their folders.

Layout::

    models/
      checkpoints/<name>/              diffusers folder (has model_index.json)
      checkpoints/<name>.safetensors   single-file SDXL checkpoint
      loras/<name>.safetensors
      controlnets/<name>/              diffusers folder
      vae/<name>/ or vae/<name>.safetensors   optional AutoencoderKL

A name is a plain identifier. It is resolved inside its kind's folder and refused
when it could point anywhere else (``..``, separators, absolute paths, symlinks that
leave the folder). Pickle formats (``.ckpt``, ``.pt``, ``.bin``, ``.pth``) are never
opened: they can run code when loaded. This module does not import diffusers.

A checkpoint folder laid out like the SDXL refiner (``model_index.json`` without a
usable ``text_encoder``) lists as ``refiner`` and resolves as a checkpoint, for
``refiner.name``; :meth:`ModelRegistry.base_model` refuses it as a request's ``model``
(it cannot generate from text). Uploaded LoRAs are stored with a temporary file renamed
into place, so a reader never sees a half-written file.

Resolving a LoRA also reads its safetensors header (cached while the file is unchanged):
a file that was dropped into ``loras/`` broken is refused with the reason, naming the
request's parameter, instead of failing deep inside the engine.

A registry may also read *generated* roots (``generated_roots``): folders pixelmill writes
whole, such as the demo models a server without ``--model`` falls back to
(``<data dir>/demo-models``). Each is listed only while its manifest matches its files
(:mod:`pixelmill.registry.manifest`), a name in the models directory wins over the same
name there, and uploads always go to the models directory. Such a folder appears in one
rename, possibly after the scan (the engine writes the demo when it falls back): every
lookup notices that with one ``stat`` and scans again.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pixelmill.core.errors import InvalidRequest, NotFound
from pixelmill.core.policy import NAME_PATTERN, check_name
from pixelmill.registry.manifest import manifest_problem

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""A Hugging Face hub id (``owner/name``): how a model, VAE or base repo is named when it is not a path."""
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})


class ModelKind(str, enum.Enum):
    """Kinds of things a models directory holds, with the folder each lives in."""

    checkpoint = "checkpoints"
    lora = "loras"
    controlnet = "controlnets"
    vae = "vae"


@dataclass(frozen=True)
class ModelEntry:
    """One usable model file or folder found in the models directory."""

    name: str
    kind: ModelKind
    path: Path
    single_file: bool
    size_bytes: int
    refiner: bool = False

    @property
    def listed_kind(self) -> str:
        """The kind listings show: ``refiner`` for refiner checkpoints, else the kind's name."""
        return "refiner" if self.refiner else self.kind.name


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


def is_refiner_folder(path: Path) -> bool:
    """SDXL refiner layout: ``text_encoder`` is null (it has only ``text_encoder_2``)."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict) or "text_encoder_2" not in index:
        return False
    first = index.get("text_encoder")
    return first is None or (isinstance(first, list) and None in first)


class ModelRegistry:
    """Scans a models directory and resolves names of checkpoints, LoRAs, ControlNets, VAEs.

    Thread-safe: a refresh builds a new table and swaps it in whole, so readers (API
    threads, engine threads) see either the old or the new scan, never a mix.
    """

    def __init__(self, root: Path, *, generated_roots: tuple[tuple[Path, str], ...] = ()):
        """``generated_roots``: ``(folder, manifest kind)`` pairs read after ``root``."""
        self.root = root
        self.generated_roots = tuple((Path(folder), kind) for folder, kind in generated_roots)
        self._entries: dict[tuple[ModelKind, str], ModelEntry] = {}
        self._origins: dict[tuple[ModelKind, str], Path] = {}  # the root each entry was found in
        self._generated_seen: tuple | None = None
        self._refresh_lock = threading.Lock()

    def refresh(self) -> None:
        """Re-scan the directory (at start and on demand)."""
        with self._refresh_lock:  # serialised so an older scan never replaces a newer one
            seen = self._generated_state()
            entries: dict[tuple[ModelKind, str], ModelEntry] = {}
            origins: dict[tuple[ModelKind, str], Path] = {}
            roots = [self.root] + [folder for folder, kind in self.generated_roots
                                   if manifest_problem(folder, kind=kind) is None]
            for root in roots:
                for kind in ModelKind:
                    for entry in self._scan(root, kind):
                        origins.setdefault((kind, entry.name), root)
                        entries.setdefault((kind, entry.name), entry)  # the models directory wins
            self._origins = origins
            self._entries = entries
            self._generated_seen = seen

    def _generated_state(self) -> tuple:
        """What identifies the generated roots' current folders (None where absent)."""
        state = []
        for folder, _ in self.generated_roots:
            try:
                stat = folder.stat()
                state.append((stat.st_ino, stat.st_mtime_ns))
            except OSError:
                state.append(None)
        return tuple(state)

    def _current(self) -> dict[tuple[ModelKind, str], ModelEntry]:
        """The entries, re-scanned first when a generated root appeared, went or was replaced."""
        if self.generated_roots and self._generated_state() != self._generated_seen:
            self.refresh()
        return self._entries

    def counts(self) -> dict[str, int]:
        """How many entries of each listed kind (``refiner`` counted apart from ``checkpoint``)."""
        counts = {kind.name: 0 for kind in ModelKind} | {"refiner": 0}
        for entry in list(self._current().values()):
            counts[entry.listed_kind] += 1
        return counts

    def _scan(self, root: Path, kind: ModelKind) -> list[ModelEntry]:
        folder = root / kind.value
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
        refiner = kind is ModelKind.checkpoint and not single and is_refiner_folder(child)
        return ModelEntry(name, kind, child, single, _size_of(child), refiner)

    def list(self, kind: ModelKind) -> list[ModelEntry]:
        """Entries of one kind, sorted by name."""
        entries = self._current()  # one snapshot: a concurrent refresh swaps, never mutates
        return sorted((e for (k, _), e in entries.items() if k is kind), key=lambda e: e.name)

    def find(self, kind: ModelKind, name: str) -> ModelEntry | None:
        """The entry called ``name``, or None; never looks outside the scanned folder."""
        return self._current().get((kind, name))

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
        if not _inside(entry.path, self._origins.get((kind, name), self.root) / kind.value):
            raise InvalidRequest(f"{kind.name} {name!r} points outside its folder", param=param)
        if kind is ModelKind.lora:
            _check_lora_file(entry, param)
        return entry

    def base_model(self, name: str, *, param: str = "model") -> ModelEntry:
        """The checkpoint called ``name`` as a request's base model; a refiner is refused.

        An SDXL refiner has no first text encoder and cannot generate from text, so naming
        it as ``model`` is a client mistake (400 naming ``param``), found before anything is
        queued or loaded; it is used as ``refiner.name`` instead.
        """
        entry = self.resolve(ModelKind.checkpoint, name, param=param)
        if entry.refiner:
            bases = ", ".join(e.name for e in self.list(ModelKind.checkpoint) if not e.refiner) or "none"
            raise InvalidRequest(
                f"{name!r} is a refiner checkpoint, not a base model: pass it as refiner.name "
                f"with a base model as {param} (base models: {bases})", param=param)
        return entry

    def store_lora(
        self, name: str, data: bytes, *, overwrite: bool = False,
        check: Callable[[Path], None] | None = None,
    ) -> ModelEntry:
        """Store ``data`` as ``loras/<name>.safetensors`` atomically, then re-scan.

        The bytes go to a hidden temporary file inside ``loras/`` (never listed: not a
        ``.safetensors`` name), ``check`` validates that file, and only then is it renamed
        into place. An existing LoRA is replaced only with ``overwrite``; errors name
        the ``name`` parameter, or whatever ``check`` raises.
        """
        name = check_name(name.removesuffix(".safetensors"), param="name")
        if Path(name).suffix.lower() in PICKLE_SUFFIXES:
            raise InvalidRequest(f"{name!r} looks like a pickle file name; choose another name", param="name")
        folder = self.root / ModelKind.lora.value
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.safetensors"
        if not overwrite and os.path.lexists(target):
            raise _exists(name)
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if check is not None:
                check(Path(temp))
            _publish(Path(temp), target, overwrite=overwrite, name=name)
        finally:
            Path(temp).unlink(missing_ok=True)
        self.refresh()
        entry = self.find(ModelKind.lora, name)  # no header check: ``check`` is the caller's
        if entry is None:
            raise InvalidRequest(f"LoRA {name!r} was stored but is not listed; choose another name",
                                 param="name")
        return entry


def _check_lora_file(entry: ModelEntry, param: str) -> None:
    """InvalidRequest naming ``param`` unless the LoRA file is well-formed safetensors."""
    try:
        stat = entry.path.stat()
        problem = _header_problem(str(entry.path), stat.st_mtime_ns, stat.st_size)
    except OSError as exc:
        problem = f"it cannot be read ({exc.strerror or type(exc).__name__})"
    if problem:
        raise InvalidRequest(f"LoRA {entry.name!r} is not usable: {problem}", param=param)


@functools.lru_cache(maxsize=512)
def _header_problem(path: str, mtime_ns: int, size: int) -> str | None:
    """Why the file at ``path`` is not safetensors, or None; keyed by mtime and size so an
    edited file is read again. Only the header is read, never the tensors."""
    # lora_check imports this module for ModelEntry and ModelKind: import it when first needed.
    from pixelmill.registry.lora_check import HeaderError, read_header

    try:
        read_header(Path(path))
    except HeaderError as exc:
        return str(exc)
    return None


def _publish(temp: Path, target: Path, *, overwrite: bool, name: str) -> None:
    """Rename ``temp`` to ``target``: replacing it (``overwrite``) or only if it is new."""
    try:
        if overwrite:
            os.replace(temp, target)  # replaces a symlink itself, never what it points to
        else:
            os.link(temp, target)  # atomic "create if absent": a racing upload loses cleanly
    except FileExistsError:
        raise _exists(name) from None
    except IsADirectoryError:
        raise InvalidRequest(f"{name!r} names a folder in loras/; choose another name",
                             param="name") from None


def _exists(name: str) -> InvalidRequest:
    return InvalidRequest(f"a LoRA named {name!r} exists; send overwrite=true to replace it", param="name")

"""Manifests of generated model folders: what a complete folder holds, checked before reuse.

The server writes the demo models (``<data dir>/demo-models``) itself when it falls back
to them. A start that dies halfway (killed, disk full) must not leave a folder that a
later start takes for complete, so such a folder is built in a temporary sibling, gets a
manifest listing every file with its size as its last file, and is renamed into place
in one step. :func:`manifest_problem` is the check before reuse: a folder without a
manifest, or whose files do not match it, is not used (and :func:`discard_incomplete`
moves it out of the way so it is written again).

No engine or diffusers import: the registry and the composition root read manifests, the
engine's demo writer (:mod:`pixelmill.engine.demo`) writes them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_MODELS_KIND = "pixelmill-demo-models"
"""The kind of a folder holding only the demo models (``pixelmill.engine.demo`` writes it)."""
MANIFEST_NAME = ".pixelmill-manifest.json"
"""Hidden, so a models-directory scan never mistakes it for a model."""
FORMAT = 1
PARTIAL_MARK = ".partial-"
"""In the name of a folder still being built (``.<name>.partial-<random>``)."""
OLD_MARK = ".old-"
"""In the name of a folder holding a replaced copy until it is deleted."""
STALE_PARTIAL_S = 3600
"""A partial folder this old belongs to a writer that died: it may be removed."""


def write_manifest(folder: Path, *, kind: str, details: dict | None = None) -> None:
    """List every file under ``folder`` with its size in its manifest (written last)."""
    files = {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    body = {"format": FORMAT, "kind": kind, **(details or {}), "files": files}
    temp = folder / (MANIFEST_NAME + ".tmp")
    temp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", "utf-8")
    os.replace(temp, folder / MANIFEST_NAME)


def manifest_problem(folder: Path, *, kind: str) -> str | None:
    """Why ``folder`` is not a complete generated folder of ``kind``; None when it is."""
    try:
        body = json.loads((folder / MANIFEST_NAME).read_text("utf-8"))
    except FileNotFoundError:
        return "it has no manifest (an interrupted write, or written by an older pixelmill)"
    except (OSError, ValueError) as exc:
        return f"its manifest cannot be read ({type(exc).__name__})"
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("kind") != kind:
        return f"its manifest is not a format-{FORMAT} {kind} manifest"
    files = body.get("files")
    if not isinstance(files, dict) or not files:
        return "its manifest lists no files"
    for name, size in files.items():
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, the manifest says {size}"
    return None


def complete_details(folder: Path, *, kind: str) -> dict | None:
    """The manifest of ``folder`` when it is a complete generated folder of ``kind``, else None."""
    if manifest_problem(folder, kind=kind) is not None:
        return None
    return json.loads((folder / MANIFEST_NAME).read_text("utf-8"))


def _new_sibling(target: Path, mark: str) -> Path:
    """A new empty hidden folder next to ``target`` (mkdir, not mkdtemp: the umask applies,
    so the published folder gets the permissions any other folder the user makes gets)."""
    while True:
        folder = target.parent / f".{target.name}{mark}{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def staging_folder(target: Path) -> Path:
    """A new empty folder next to ``target`` to build it in (same filesystem: renames are atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    return _new_sibling(target, PARTIAL_MARK)


def publish(staged: Path, target: Path) -> None:
    """Rename the finished ``staged`` file or folder to ``target``, replacing what was there."""
    if target.exists():
        # Renamed away first, so ``target`` is never a mix of old and new files.
        retired = _new_sibling(target, OLD_MARK)
        os.replace(target, retired / target.name)
        os.replace(staged, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staged, target)


def discard_incomplete(target: Path, *, kind: str) -> str | None:
    """Move ``target`` away and delete it unless it is complete; the reason, or None if kept.

    Nothing happens when ``target`` does not exist (it will be written when needed).
    """
    if not target.exists():
        return None
    problem = manifest_problem(target, kind=kind)
    if problem is None:
        return None
    log.warning("%s is incomplete (%s): writing it again when it is needed", target, problem)
    retired = _new_sibling(target, OLD_MARK)
    os.replace(target, retired / target.name)
    shutil.rmtree(retired, ignore_errors=True)
    return problem


def remove_stale_partials(target: Path) -> None:
    """Delete folders an interrupted build of ``target`` left behind (older than an hour,
    so a build running right now in another process is left alone)."""
    now = time.time()
    for pattern in (f".{target.name}{PARTIAL_MARK}*", f".{target.name}{OLD_MARK}*"):
        for leftover in target.parent.glob(pattern):
            try:
                if now - leftover.stat().st_mtime > STALE_PARTIAL_S:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                continue  # another process removed it first

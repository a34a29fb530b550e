"""The tiny-model cache: where tiny models live and the ONE atomic, idempotent build helper every builder uses.

A finished model directory carries one marker file, :data:`MARKER` (JSON: the :data:`TINY_VERSION` it was built for,
its ``kind``, the library versions, the tiny-model warning). A build writes into a temporary sibling directory that is
renamed into place, so an interrupted build leaves nothing half-written, concurrent builders (two test workers, two
flow runs) end with one complete copy, and a directory built for another ``TINY_VERSION`` or kind is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geoseg.types import TINY_MODEL_WARNING

#: Bumped whenever a tiny config changes, so stale caches are rebuilt instead of half-matching new code.
TINY_VERSION = "2"
#: The one completion marker of every tiny model directory.
MARKER = "geolabel_tiny.json"


def model_cache_dir() -> Path:
    """Where tiny models (and any other locally built model) live: env GEOLABEL_MODEL_CACHE or
    ~/.cache/geolabel/models."""
    env = os.environ.get("GEOLABEL_MODEL_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "geolabel" / "models"


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for name in ("torch", "transformers", "open_clip_torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def is_built(path: Path, kind: str) -> bool:
    """Whether ``path`` holds a complete tiny model of ``kind`` built for this :data:`TINY_VERSION`."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("version") == TINY_VERSION and info.get("kind") == kind


def build_atomically(final: Path, kind: str, build: Callable[[Path], dict[str, Any] | None]) -> Path:
    """Run ``build(tmpdir)`` and move the result to ``final`` unless a complete copy of ``kind`` is already there.

    ``build`` may return extra JSON-able facts for the marker (e.g. the seed). Returns ``final``.
    """
    final = Path(final).expanduser()
    if is_built(final, kind):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.build-", dir=final.parent))
    try:
        extra = build(tmp) or {}
        info = {"version": TINY_VERSION, "kind": kind, "libraries": _library_versions(), "warning": TINY_MODEL_WARNING,
                **extra}
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        if is_built(final, kind):  # another process finished first
            return final
        if final.exists():  # a stale, older or half-copied build
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # a concurrent builder renamed its copy in between
            if not is_built(final, kind):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final

"""The benchmarks' own helpers: the one place where benchmark scripts reach test infrastructure (public names only).

* the orchestration-only "instant" models (``tests.fixtures.instant``; their masks mean nothing);
* :func:`start_label_studio`: a fresh local Label Studio under ``root``, seeded from the migrated template the test
  fixture keeps (``tests.fixtures.labelstudio.ensure_template``) so it starts in seconds;
* :func:`serve`: an ASGI app on a loopback port (``tests.helpers.ml_backend.serve``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.fixtures.instant import (
    InstantGrounder,
    InstantMatcher,
    InstantSegmenter,
    instant_config,
    instant_pipeline,
    register_instant,
)
from tests.helpers.ml_backend import serve

__all__ = [
    "InstantGrounder",
    "InstantMatcher",
    "InstantSegmenter",
    "instant_config",
    "instant_pipeline",
    "label_studio_template",
    "register_instant",
    "serve",
    "start_label_studio",
]


def label_studio_template() -> Path:
    """A migrated Label Studio data dir for the installed .venv-ls (built once, cached; see tests.fixtures)."""
    from labeling.server import default_venv
    from tests.fixtures.labelstudio import ensure_template

    return ensure_template(default_venv())


def start_label_studio(root: Path) -> tuple[Any, Any]:
    """A fresh local Label Studio in ``root/labelstudio`` serving ``root/data``; returns (server, token)."""
    import shutil

    from labeling.server import LabelStudioServer

    shutil.copytree(label_studio_template(), root / "labelstudio", dirs_exist_ok=True)
    srv = LabelStudioServer(root / "labelstudio", imagery_root=root / "data")  # = from_settings with data_dir
    srv.start()
    return srv, srv.token()

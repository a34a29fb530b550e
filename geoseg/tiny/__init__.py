"""Tiny randomly initialised models for the real code paths (tests, demo, CPU benchmarks): one package, one cache.

Every backend keeps its real loading code: the tiny models are built here from small configs, written to the cache
directory with the library's own ``save_pretrained`` (or open_clip's ``local-dir:`` layout) and loaded back through
exactly the path the real weights use (``from_pretrained`` / ``open_clip.create_model``). Their masks are meaningless
(``geoseg.types.TINY_MODEL_WARNING``); they exist to exercise shapes, prompts, caching and timing.

Layout under the cache root (:func:`model_cache_dir`, env ``GEOLABEL_MODEL_CACHE``)::

    open_clip_tiny/     open_clip_config.json + open_clip_model.safetensors   (geoseg.tiny.clip; "local-dir:<dir>")
    sam3_tiny/detector/ Sam3Model + Sam3Processor                              (geoseg.tiny.sam3)
    sam3_tiny/tracker/  Sam3TrackerModel + Sam3TrackerProcessor
    qwen3vl/            Qwen3-VL grounder + processor                          (geoseg.tiny.qwen)
    qwen2_5vl/          Qwen2.5-VL (the second family the transformers grounder supports)

Every directory is built by the one helper :func:`geoseg.tiny.cache.build_atomically` (temporary sibling, renamed
into place) and carries the one marker :data:`geoseg.tiny.cache.MARKER`.
"""

from __future__ import annotations

from pathlib import Path

from geoseg.tiny.cache import MARKER, TINY_VERSION, build_atomically, is_built, model_cache_dir
from geoseg.tiny.clip import OPEN_CLIP_DIRNAME, build_tiny_open_clip, tiny_open_clip_config
from geoseg.tiny.qwen import (
    TINY_GROUNDER_SUBDIR,
    TINY_QWEN25VL_SUBDIR,
    build_tiny_grounder_model,
    build_tiny_qwen25vl_model,
)
from geoseg.tiny.sam3 import SAM3_DIRNAME, SAM3_TINY_IMAGE_SIZE, build_tiny_sam3


def ensure_tiny_models(root: Path | None = None) -> dict[str, Path]:
    """Build (first use) and return the tiny models: keys ``grounder``, ``matcher``, ``segmenter``.

    ``matcher`` is an open_clip ``local-dir:`` directory, ``segmenter`` the directory holding ``detector/`` and
    ``tracker/``, ``grounder`` the Qwen3-VL directory.
    """
    root = Path(root) if root is not None else model_cache_dir()
    return {
        "matcher": build_tiny_open_clip(root),
        "segmenter": build_tiny_sam3(root),
        "grounder": build_tiny_grounder_model(root),
    }


__all__ = [
    "MARKER",
    "OPEN_CLIP_DIRNAME",
    "SAM3_DIRNAME",
    "SAM3_TINY_IMAGE_SIZE",
    "TINY_GROUNDER_SUBDIR",
    "TINY_QWEN25VL_SUBDIR",
    "TINY_VERSION",
    "build_atomically",
    "build_tiny_grounder_model",
    "build_tiny_open_clip",
    "build_tiny_qwen25vl_model",
    "build_tiny_sam3",
    "ensure_tiny_models",
    "is_built",
    "model_cache_dir",
    "tiny_open_clip_config",
]

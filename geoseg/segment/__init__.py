"""Segmenter 𝓢 (SAM3): one vision encoding per crop, then point prompts (Route A) and a text prompt (Route B).

``build_segmenter(spec)`` picks the backend from ``spec.kind``:

* ``"sam3-transformers"`` (default): transformers' ``Sam3Model`` + ``Sam3Processor`` for text prompts and
  ``Sam3TrackerModel`` + ``Sam3TrackerProcessor`` for point prompts, sharing one ViT backbone forward per crop.
  ``spec.model`` is a hub id (``facebook/sam3``) or a local directory; ``options["tracker_model"]`` overrides where
  the tracker half is loaded from (defaults to ``spec.model``, which holds both in the released checkpoint).
* ``"tiny"``: the same backend on tiny random models built into the cache dir (``geoseg.tiny``); masks meaningless.
* ``"sam3-official"``: Meta's ``sam3`` package, GPU installs only, imported lazily (see ``geoseg.segment.official``).
"""

from __future__ import annotations

from geoseg.protocols import Segmenter
from geoseg.types import BackendSpec

SEGMENTER_KINDS = ("sam3-transformers", "sam3-official", "tiny")


def build_segmenter(spec: BackendSpec) -> Segmenter:
    """Build the segmenter described by ``spec`` (see the module docstring for the kinds)."""
    if not isinstance(spec, BackendSpec):
        raise ValueError(f"build_segmenter needs a BackendSpec, got {type(spec).__name__}")
    if spec.kind == "sam3-transformers":
        from geoseg.segment.sam3_transformers import Sam3TransformersSegmenter

        return Sam3TransformersSegmenter.from_spec(spec)
    if spec.kind == "tiny":
        from geoseg.segment.sam3_transformers import Sam3TransformersSegmenter
        from geoseg.tiny import build_tiny_sam3, model_cache_dir

        root = spec.options.get("cache_dir") or model_cache_dir()
        d = build_tiny_sam3(root)
        options = {k: v for k, v in spec.options.items() if k != "cache_dir"}
        options.setdefault("tracker_model", str(d / "tracker"))
        return Sam3TransformersSegmenter.from_spec(
            BackendSpec("sam3-transformers", str(d / "detector"), options), meaningless=True
        )
    if spec.kind == "sam3-official":
        from geoseg.segment.official import Sam3OfficialSegmenter

        return Sam3OfficialSegmenter.from_spec(spec)
    raise ValueError(f"unknown segmenter kind {spec.kind!r}; choose from {list(SEGMENTER_KINDS)}")


__all__ = ["SEGMENTER_KINDS", "build_segmenter"]

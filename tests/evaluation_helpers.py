"""Helpers shared by the datasets/evaluation tests: the benchmark generator and a deterministic pipeline double."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from geoseg.types import GeoSegResult, Grounding

_MAKE_BENCH = Path(__file__).parent / "data" / "make_bench.py"


def load_make_bench():
    spec = importlib.util.spec_from_file_location("make_bench", _MAKE_BENCH)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


class ColourPipeline:
    """A deterministic stand-in for GeoSegPipeline (same call interface): the mask is every pixel whose colour is
    far from the image's median colour. Not a model; it only gives the harness non-trivial, varied scores."""

    is_meaningless = False

    def __init__(self, threshold: float = 60.0, fail_on: str | None = None, version: str = "colour-double-v1"):
        self.threshold = threshold
        self.fail_on = fail_on
        self.model_version = version
        self.calls = 0

    def __call__(self, image: np.ndarray, query: str) -> GeoSegResult:
        self.calls += 1
        if self.fail_on and self.fail_on in query:
            raise RuntimeError("double told to fail on this query")
        med = np.median(image.reshape(-1, 3), axis=0)
        mask = np.linalg.norm(image.astype(np.float32) - med, axis=2) > self.threshold
        return GeoSegResult(mask=mask, route="text" if mask.any() else "empty",
                            grounding=Grounding(phrase=query.split()[-1].strip(".")), model_version=self.model_version,
                            timings={"double": 0.001})


class ColourBoxGrounder:
    """A deterministic Grounder double (geoseg.protocols.Grounder): the box around the pixels far from the image's
    median colour, the query's last word as phrase. Lets the tiny matcher and segmenter run on a real box."""

    def ground(self, image: np.ndarray, query: str) -> Grounding:
        from geoseg.types import Box

        med = np.median(image.reshape(-1, 3), axis=0)
        far = np.linalg.norm(image.astype(np.float32) - med, axis=2) > 60.0
        phrase = query.rstrip(".?! ").split()[-1]
        if not far.any():
            return Grounding(phrase=phrase, raw_text="[]")
        ys, xs = np.nonzero(far)
        box = Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        return Grounding(boxes=(box,), phrase=phrase, raw_text="colour box")

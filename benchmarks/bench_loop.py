"""Loop benchmark: N items through ingest -> preannotate -> push -> sync -> export against a real Label Studio.

The models are replaced by "instant" implementations of the Grounder/Matcher/Segmenter protocols (a centred box, a
radial similarity map, disk/ellipse masks) so only orchestration is timed: Prefect tasks, database upserts, blob
writes, Label Studio imports and exports. Their masks are geometric placeholders and mean nothing.

The ceiling: the same tasks (same data, same predictions) bulk-imported straight into a second Label Studio project
with one ``POST /api/projects/{id}/import`` per chunk, measured in the same run.

    .venv/bin/python -m benchmarks.bench_loop --items 1000 [--json out.json]
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from geoseg.types import BackendSpec, Box, GeoSegConfig, Grounding


class InstantGrounder:
    """Returns at once: the centred box covering the middle half of the image, the query as phrase."""

    meaningless = True

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def ground(self, image: np.ndarray, query: str) -> Grounding:
        if self.delay_s:
            time.sleep(self.delay_s)
        h, w = image.shape[:2]
        box = Box(w * 0.25, h * 0.25, w * 0.75, h * 0.75)
        raw = json.dumps({"bbox": [round(v, 1) for v in box.as_tuple()], "prompt": query[:40]})
        return Grounding(boxes=(box,), phrase=query[:40], raw_text=raw)


class InstantMatcher:
    meaningless = True

    def similarity_map(self, crop: np.ndarray, phrase: str) -> np.ndarray:
        h, w = crop.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        return 1.0 - np.hypot((yy - h / 2) / max(h, 1), (xx - w / 2) / max(w, 1))


class InstantSegmenter:
    meaningless = True

    def set_image(self, crop: np.ndarray) -> Any:
        return crop.shape[:2]

    def predict_points(self, state: Any, points: np.ndarray) -> np.ndarray:
        h, w = state
        yy, xx = np.mgrid[0:h, 0:w]
        m = np.zeros((h, w), dtype=bool)
        r = max(2.0, min(h, w) / 6)
        for x, y in np.asarray(points).reshape(-1, 2):
            m |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
        return m

    def predict_text(self, state: Any, phrase: str) -> np.ndarray:
        h, w = state
        yy, xx = np.mgrid[0:h, 0:w]
        return ((xx - w / 2) / (w / 2.5)) ** 2 + ((yy - h / 2) / (h / 2.5)) ** 2 <= 1.0


def instant_config() -> GeoSegConfig:
    return GeoSegConfig(
        profile="instant",
        grounder=BackendSpec("instant"),
        matcher=BackendSpec("instant"),
        segmenter=BackendSpec("instant"),
    )


def instant_pipeline(delay_s: float = 0.0) -> Any:
    """A GeoSegPipeline over the instant models (``delay_s`` per grounding call simulates model time)."""
    from geoseg.pipeline import GeoSegPipeline

    return GeoSegPipeline(instant_config(), InstantGrounder(delay_s), InstantMatcher(), InstantSegmenter())


def register_instant(name: str = "instant", delay_s: float = 0.0) -> str:
    from flows.preannotate import register_pipeline_factory

    register_pipeline_factory(name, lambda: instant_pipeline(delay_s))
    return name
